#!/usr/bin/env bash
# Every speed benchmark of embeddings and in silico perturbation on a GPU machine, from exported inputs
# only, in under 8 minutes, with the tables in one output folder.
#
# Here, once (needs ../shared/data, anndata, datasets):
#     bash benchmarks/gpu_all.sh --export          # writes .devinputs/ (git-ignored, ~16 MB)
# There (PyTorch + transformers + pandas; no ../shared/data, anndata nor datasets needed):
#     bash benchmarks/gpu_all.sh                   # device tool: carry [".devinputs"]
# Upstream Geneformer as the peer there too, when a checkout and a Python with its dependencies
# (datasets, anndata, scanpy, tdigest, peft, ...) are present:
#     UPSTREAM=/path/to/Geneformer UPSTREAM_PYTHON=/path/to/python bash benchmarks/gpu_all.sh
# (the checkout patched as docs/benchmarks.md says; netformer's own side then also needs datasets,
# to write the cells upstream reads). Without it, the peers are the self-written references.
#
# Output: $OUT (else ./gpu_results): env.txt, embed.txt (v1-10m and v2-104m, fp32 and bf16),
# perturb_cases.txt (tiny, trained, v1 vs the batch-1 reference), perturb_peer.txt (all genes of the
# 1,101-token pbmc3k cell and of a Kang cell, exact and screen, fp32 and bf16); each step also prints to stdout. A step that fails or
# runs out of the time left is reported and the next one runs.
set -uo pipefail
cd "$(dirname "$0")/.."
INPUTS=${INPUTS:-.devinputs}
if [ "${1:-}" = "--export" ]; then
    set -e
    python benchmarks/perturb_speed.py --export-inputs "$INPUTS"
    python benchmarks/embed_speed.py --export-inputs "$INPUTS" --n-pbmc 200
    du -sh "$INPUTS"
    exit 0
fi
[ -d "$INPUTS" ] || { echo "no $INPUTS: run 'bash benchmarks/gpu_all.sh --export' here first and carry it" >&2; exit 2; }
RES=${OUT:-gpu_results}
mkdir -p "$RES"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TQDM_DISABLE=1
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}     # DEVICE=cpu only to try the script's plumbing on a machine without a GPU
BUDGET=${BUDGET:-465}   # seconds for all steps (under 8 minutes with the start-up checks)
UP=()
[ -n "${UPSTREAM:-}" ] && UP=(--upstream "$UPSTREAM" --upstream-python "${UPSTREAM_PYTHON:-python3}")

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
    $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
    $PY -c "import datasets; print('datasets', datasets.__version__)" 2>/dev/null || echo "no datasets package: ours runs the perturbation engine directly"
    echo "upstream: ${UPSTREAM:-none (self-written references)}"
} 2>&1 | tee "$RES/env.txt"

# step NAME SECONDS_WANTED COMMAND...: runs COMMAND with at most SECONDS_WANTED (and what is left)
step() {
    local name=$1 want=$2; shift 2
    local left=$((BUDGET - SECONDS))
    if [ "$left" -lt 20 ]; then
        echo "== $name: skipped, ${left}s of the budget left" | tee "$RES/$name.txt"
        return
    fi
    [ "$want" -gt "$left" ] && want=$left
    echo "== $name (at most ${want}s): $*" | tee "$RES/$name.txt"
    timeout "$want" "$@" 2>&1 | grep -v -E '^(Loading weights|Writing model shards)' | tee -a "$RES/$name.txt"
    local rc=${PIPESTATUS[0]}
    [ "$rc" -eq 0 ] || echo "== $name: exit $rc" | tee -a "$RES/$name.txt"
}

step embed 150 $PY benchmarks/embed_speed.py --inputs "$INPUTS" --device "$DEV" --models v1,v2 --n-pbmc 200 \
    --n-full 32 --batch-size 32 --reference --precision fp32,bf16 "${UP[@]}"
step perturb_cases 90 $PY benchmarks/perturb_speed.py --inputs "$INPUTS" --device "$DEV" --cases tiny,trained,v1 \
    --v1-batch 32 --n-ref 32 --threads 8
step perturb_peer 210 $PY benchmarks/perturb_speed.py --inputs "$INPUTS" --device "$DEV" --cases v1-cell,v2-kang \
    --peer-batch 64 --n-ref 128 --threads 8 --v2-cls --precision fp32,bf16 "${UP[@]}"
echo "done in ${SECONDS}s; tables in $RES"
