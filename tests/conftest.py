"""Shared fixtures: real data from ../shared/data (read in place) and a tiny real model.

``tiny_pretrained`` pretrains the ``tiny`` preset for a short run on pooled real PBMC cells once per
test session (about half a minute on 2 CPU cores); tests of embeddings, fine-tuning and in silico
perturbation build on it instead of on mocks.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Idle OpenMP threads sleep instead of spinning: on a shared 2-core machine spinning threads make
# small tensor operations ten times slower. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402

torch = pytest.importorskip("torch")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    from netformer.datasets import shared_data_dir

    return shared_data_dir()


@pytest.fixture(scope="session")
def scrna(shared_data) -> Path:
    return shared_data / "scrna"


@pytest.fixture(scope="session")
def v1(shared_data):
    """Geneformer V1 (gc30M) dictionaries."""
    from netformer.genes import GeneVocab

    return GeneVocab.from_geneformer(shared_data / "genes" / "geneformer_gc30M")


@pytest.fixture(scope="session")
def v2(shared_data):
    """Geneformer V2 (gc104M) dictionaries."""
    from netformer.genes import GeneVocab

    return GeneVocab.from_geneformer(shared_data / "genes" / "geneformer_gc104M")


@dataclass
class TinyModel:
    """A tiny model pretrained on real cells, with its vocabulary and tokenized data."""

    model_dir: Path
    vocab: object  # netformer.genes.GeneVocab (pad 0, mask 1, cls 2, eos 3)
    pbmc: object  # datasets.Dataset of pbmc3k (published cell_type, n_counts), 256 tokens
    kang: object  # datasets.Dataset of Kang 2018 ctrl/stim (condition), 256 tokens
    result: object  # netformer.pretrain.PretrainResult
    max_length: int = 256

    def bare_checkpoint(self, path: Path) -> Path:
        """A copy of the model without its dictionary (config and weights only), as Geneformer
        publishes its checkpoints."""
        import shutil

        path.mkdir(parents=True)
        for f in ("config.json", "model.safetensors"):
            shutil.copyfile(self.model_dir / f, path / f)
        return path


@pytest.fixture(scope="session")
def tiny_pretrained(scrna, tmp_path_factory) -> TinyModel:
    import datasets

    from netformer.pretrain import PretrainConfig, pretrain
    from netformer.tokenize import TranscriptomeTokenizer, build_vocab

    pbmc_path = scrna / "pbmc3k_raw_labeled.h5ad"
    kang_path = scrna / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
    vocab = build_vocab([pbmc_path, kang_path], min_cells=5, name="test-pbmc")
    pbmc = TranscriptomeTokenizer(vocab, model_input_size=256, obs_columns=["cell_type"]).tokenize(pbmc_path)
    kang = TranscriptomeTokenizer(vocab, model_input_size=256, obs_columns=["condition"]).tokenize(kang_path)
    pooled = datasets.concatenate_datasets([pbmc.select_columns(["input_ids", "length"]),
                                            kang.select_columns(["input_ids", "length"])])
    out = tmp_path_factory.mktemp("tiny_pretrained")
    cfg = PretrainConfig(preset="tiny", max_length=256, max_steps=200, batch_size=16, learning_rate=2e-3,
                         warmup_steps=30, save_steps=200, logging_steps=10, seed=0)
    result = pretrain(pooled, vocab, out, cfg)
    return TinyModel(result.model_dir, vocab, pbmc, kang, result)
