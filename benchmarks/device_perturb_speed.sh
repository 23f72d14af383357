#!/usr/bin/env bash
# The perturbation speed benchmark on a GPU machine that has PyTorch and transformers but neither
# ../shared/data nor anndata/datasets (this project's lent device machines).
#
# Here, once:   python benchmarks/perturb_speed.py --export-inputs .devinputs   (15 MB, git-ignored)
# There:        bash benchmarks/device_perturb_speed.sh   (device tool: carry [".devinputs"])
# Output: the benchmark's table on stdout and in $OUT/perturb_speed_cuda.txt (or ./ without $OUT).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -d .devinputs ] || { echo "no .devinputs: run 'python benchmarks/perturb_speed.py --export-inputs .devinputs' first" >&2; exit 2; }
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available())"
python3 benchmarks/perturb_speed.py --inputs .devinputs --device cuda --v1-batch 32 --n-ref 32 --threads 8 "$@" \
    2>&1 | tee "${OUT:-.}/perturb_speed_cuda.txt"
