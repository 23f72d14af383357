"""Published checkpoints by name (issue 10, item 6), tested OFFLINE, never over the network.

``load_model("ctheodoris/Geneformer", subfolder="Geneformer-V2-104M")`` and ``netformer embed
ctheodoris/Geneformer ... --subfolder Geneformer-V2-104M`` resolve the model through the Hugging Face
Hub cache (huggingface_hub ``snapshot_download``; with ``HF_HUB_OFFLINE=1`` only the cache is read) and
find the dictionaries that ship in the same repository, so V2 needs no ``--vocab``.

The tests write a Hub cache in huggingface_hub's own layout (``models--ctheodoris--Geneformer/refs/main``
holding a commit hash, ``blobs/`` with the files, ``snapshots/<hash>/...`` with relative symlinks to
them), laid out as Geneformer's Hub repository is:

- ``Geneformer-V2-104M/`` and ``Geneformer-V1-10M/``: ``config.json`` + ``model.safetensors``, random
  weights from the REAL upstream configurations (``../shared/data/models/geneformer_configs``, only
  ``num_hidden_layers`` cut to 2);
- ``geneformer/*_gc104M.pkl`` (V2) and ``geneformer/gene_dictionaries_30m/*_gc30M.pkl`` (V1): copies,
  in the temporary cache, of the real pickles of ``../shared/data/genes``.

huggingface_hub reads ``HF_HUB_OFFLINE`` and ``HF_HUB_CACHE`` once, when it is imported
(``huggingface_hub.constants``); in-process tests therefore set both the environment and those
constants (so no request can leave the process: with ``constants.HF_HUB_OFFLINE`` every HTTP call
raises), and one test runs the CLI in a fresh process with the environment set before import, as a
user does. netformer itself reads both variables when called (``netformer.model.hub_offline``,
``hub_cache_dir``), which a test checks separately.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
huggingface_hub = pytest.importorskip("huggingface_hub")

from netformer.embed import embed_cells  # noqa: E402
from netformer.errors import ConfigError, DictionaryError  # noqa: E402
from netformer.genes import model_vocab, resolve_vocab  # noqa: E402
from netformer.model import (  # noqa: E402
    hub_allow_patterns,
    hub_cache_dir,
    hub_offline,
    load_model,
    resolve_checkpoint,
)
from netformer.tokenize import TranscriptomeTokenizer  # noqa: E402

REPO = "ctheodoris/Geneformer"
COMMIT = "7cd5b1a2e3f40516273849aabbccddeeff001122"  # any 40-hex commit hash
V2, V1 = "Geneformer-V2-104M", "Geneformer-V1-10M"
DICTIONARIES = {  # repository folder -> (shared data folder, suffix)
    "geneformer": ("geneformer_gc104M", "gc104M"),
    "geneformer/gene_dictionaries_30m": ("geneformer_gc30M", "gc30M"),
}
PICKLES = ("token_dictionary", "gene_median_dictionary", "ensembl_mapping_dict", "gene_name_id_dict")


@dataclass
class HubCache:
    cache: Path  # what HF_HUB_CACHE points at
    snapshot: Path  # .../models--ctheodoris--Geneformer/snapshots/<COMMIT>
    weights: dict  # subfolder -> a tensor of the saved model (to check what was loaded)


def _add_file(repo_dir: Path, snapshot: Path, rel: str, source: Path) -> None:
    """Store ``source`` as a blob and link ``snapshots/<hash>/<rel>`` to it, as huggingface_hub does."""
    data = source.read_bytes()
    blob = repo_dir / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True, exist_ok=True)
    if not blob.exists():
        blob.write_bytes(data)
    link = snapshot / rel
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(blob, link.parent))


@pytest.fixture(scope="module")
def hub(shared_data, tmp_path_factory) -> HubCache:
    tmp = tmp_path_factory.mktemp("hub_cache")
    cache = tmp / "hub"
    repo_dir = cache / "models--ctheodoris--Geneformer"
    snapshot = repo_dir / "snapshots" / COMMIT
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)  # no newline, as huggingface_hub writes it
    weights = {}
    for sub in (V2, V1):
        config = json.loads((shared_data / "models" / "geneformer_configs" / f"{sub}.config.json").read_text())
        config["num_hidden_layers"] = 2
        torch.manual_seed(1)
        model = transformers.BertForMaskedLM(transformers.BertConfig(**config))
        saved = tmp / "saved" / sub
        model.save_pretrained(saved)
        weights[sub] = model.bert.encoder.layer[0].attention.self.query.weight.detach().clone()
        for f in ("config.json", "model.safetensors"):
            _add_file(repo_dir, snapshot, f"{sub}/{f}", saved / f)
    for folder, (shared, suffix) in DICTIONARIES.items():
        for name in PICKLES:
            _add_file(repo_dir, snapshot, f"{folder}/{name}_{suffix}.pkl",
                      shared_data / "genes" / shared / f"{name}_{suffix}.pkl")
    shutil.rmtree(tmp / "saved")
    return HubCache(cache, snapshot, weights)


@pytest.fixture
def offline(hub, monkeypatch) -> HubCache:
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE=<the test cache>, in the environment AND in huggingface_hub's
    import-time constants (so that no request can go out, whichever one a code path reads)."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub.cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub.cache))
    return hub


@pytest.fixture(scope="module")
def v2_cells(scrna, v2) -> list[list[int]]:
    """Six real pbmc3k cells tokenized with gc104M (input 512), as plain token lists: they record no
    dictionary, so only the model's can be used."""
    a = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")
    ds = TranscriptomeTokenizer(v2, model_input_size=512).tokenize(a[np.arange(0, 2700, 450)].copy())
    return [list(s) for s in ds["input_ids"]]


# ------------------------------------------------------------------------------------------------
# loading by id + subfolder, and the dictionaries that ship in the repository
# ------------------------------------------------------------------------------------------------
def test_load_model_by_hub_id_offline(offline, v1, v2):
    """The model loads from the id + subfolder out of the cached snapshot; its dictionary is the one in
    the same repository: gc104M for V2, gc30M for V1 (matched by vocab_size), equal by digest to
    Geneformer's files."""
    for sub, want in ((V2, v2), (V1, v1)):
        model = load_model(REPO, subfolder=sub, device="cpu")
        assert Path(model.name_or_path) == offline.snapshot / sub
        assert model.config.num_hidden_layers == 2 and model.config.vocab_size == want.vocab_size
        torch.testing.assert_close(model.encoder.layer[0].attention.self.query.weight, offline.weights[sub])
        found = model_vocab(model)
        assert found is not None and found.name == want.name and found.digest == want.digest
        assert resolve_vocab(model).digest == want.digest
        assert resolve_checkpoint(REPO, sub) == offline.snapshot / sub
    # a commit hash as revision reads the same snapshot
    assert resolve_checkpoint(REPO, V2, revision=COMMIT) == offline.snapshot / V2


def test_v2_embeddings_need_no_vocab(offline, tmp_path, v2_cells, v2):
    """Cells tokenized with gc104M embed with the Hub V2 model and no vocab argument; the same weights
    outside the repository need one (so it is the published dictionary that was found)."""
    model = load_model(REPO, subfolder=V2, device="cpu")
    emb = embed_cells(model, v2_cells)
    np.testing.assert_array_equal(emb, embed_cells(model, v2_cells, vocab=v2))
    assert emb.shape == (len(v2_cells), 768) and np.isfinite(emb).all()

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copyfile(offline.snapshot / V2 / f, bare / f)
    with pytest.raises(DictionaryError, match="--vocab"):
        embed_cells(load_model(bare, device="cpu"), v2_cells)


def test_v1_refuses_cells_of_the_v2_dictionary(offline, scrna, v2):
    """The V1 model finds gc30M, so cells that record gc104M are refused with a DictionaryError."""
    a = ad.read_h5ad(scrna / "pbmc3k_raw_labeled.h5ad")
    ds = TranscriptomeTokenizer(v2, model_input_size=256).tokenize(a[:3].copy())
    with pytest.raises(DictionaryError, match="gc104M"):
        embed_cells(load_model(REPO, subfolder=V1, device="cpu"), ds)


def test_unknown_subfolder_revision_or_repo_is_a_one_line_config_error(offline):
    with pytest.raises(ConfigError) as err:
        load_model(REPO, subfolder="Geneformer-V9-1B", device="cpu")
    msg = str(err.value)
    assert "\n" not in msg and "Geneformer-V9-1B" in msg
    assert f"{V1}, {V2}" in msg  # names the models that are in the cache
    with pytest.raises(ConfigError) as err:
        load_model(REPO, subfolder=V2, revision="v9", device="cpu")  # no such ref in the cache
    assert "\n" not in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_model("ctheodoris/NotCached", subfolder=V2, device="cpu")
    assert "\n" not in str(err.value) and "HF_HUB_OFFLINE" in str(err.value)


def test_offline_and_cache_are_read_when_called(monkeypatch, tmp_path):
    """huggingface_hub reads HF_HUB_OFFLINE / HF_HUB_CACHE at import; netformer reads them when it
    resolves a model, so setting them later (in a notebook) still keeps it offline and in that cache."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    assert not hub_offline()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub_offline()
    assert hub_cache_dir() == str(constants.HF_HUB_CACHE)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert hub_cache_dir() == str(tmp_path / "home" / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    assert hub_cache_dir() == str(tmp_path / "cache")
    assert hub_cache_dir(tmp_path / "given") == str(tmp_path / "given")


def test_allow_patterns_fetch_one_model_and_the_dictionaries():
    """What ``snapshot_download`` would fetch, by huggingface_hub's own pattern matching, from a listing
    shaped like Geneformer's repository: the subfolder's config and weights and the dictionary pickles;
    not the other models (the Hub's ``*`` crosses ``/``), nor code, nor training state."""
    from huggingface_hub.utils import filter_repo_objects

    listing = [
        ".gitattributes", "README.md", "setup.py", "geneformer/__init__.py", "geneformer/emb_extractor.py",
        *(f"{folder}/{name}_{suffix}.pkl" for folder, (_, suffix) in DICTIONARIES.items() for name in PICKLES),
        *(f"{m}/{f}" for m in (V1, V2, "Geneformer-V2-316M") for f in ("config.json", "model.safetensors",
                                                                       "training_args.bin")),
        "fine_tuned_models/gf-6L-30M-i2048_CellClassifier/config.json",
        "fine_tuned_models/gf-6L-30M-i2048_CellClassifier/pytorch_model.bin",
        "examples/example_input_files/cell_classification/config.json",
    ]
    got = set(filter_repo_objects(listing, allow_patterns=hub_allow_patterns(V2)))
    dictionaries = {f"{folder}/{name}_{suffix}.pkl" for folder, (_, suffix) in DICTIONARIES.items()
                    for name in PICKLES if name != "gene_name_id_dict"}
    assert got == {f"{V2}/config.json", f"{V2}/model.safetensors"} | dictionaries
    nested = "fine_tuned_models/gf-6L-30M-i2048_CellClassifier"
    got = set(filter_repo_objects(listing, allow_patterns=hub_allow_patterns(nested)))
    assert got == {f"{nested}/config.json", f"{nested}/pytorch_model.bin"} | dictionaries
    assert set(filter_repo_objects(listing, allow_patterns=hub_allow_patterns(None))) == dictionaries


# ------------------------------------------------------------------------------------------------
# the CLI: --subfolder
# ------------------------------------------------------------------------------------------------
def _upstream_style_folder(cells: list[list[int]], path: Path) -> Path:
    """A tokenized dataset folder as upstream Geneformer writes it (``save_to_disk``, input_ids + length):
    it records no dictionary."""
    import datasets

    datasets.Dataset.from_dict({"input_ids": cells, "length": [len(c) for c in cells]}).save_to_disk(str(path))
    return path


def test_cli_embed_with_subfolder_offline(offline, tmp_path, capsys, v2_cells):
    """``netformer embed ctheodoris/Geneformer CELLS --subfolder Geneformer-V2-104M --out OUT`` with no
    --vocab, on cells that record no dictionary: the published gc104M is used; the embeddings equal the
    Python API's. An unknown subfolder is one ``error:`` line and exit status 2."""
    from netformer.cli import main

    folder = _upstream_style_folder(v2_cells, tmp_path / "cells")
    out = tmp_path / "cells.parquet"
    with pytest.raises(SystemExit) as stop:
        main(["embed", REPO, str(folder), "--subfolder", V2, "--out", str(out), "--device", "cpu"])
    captured = capsys.readouterr()
    assert stop.value.code == 0, captured.err
    emb = pd.read_parquet(out).filter(like="dim_").to_numpy()
    want = embed_cells(load_model(REPO, subfolder=V2, device="cpu"), v2_cells)
    np.testing.assert_allclose(emb, want, rtol=0, atol=1e-6)

    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main(["embed", REPO, str(folder), "--subfolder", "Geneformer-V9-1B", "--out", str(tmp_path / "x.parquet")])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2
    assert len(err.splitlines()) == 1 and err.startswith("error:") and "Geneformer-V9-1B" in err
    assert not (tmp_path / "x.parquet").exists()


def test_cli_in_a_fresh_process_with_the_environment_set_before_import(hub, tmp_path, v2_cells):
    """``python -m netformer embed ...`` as a user runs it: HF_HUB_OFFLINE=1 and HF_HUB_CACHE in the
    environment of a new process (read by huggingface_hub at import), no monkeypatching."""
    folder = _upstream_style_folder(v2_cells[:2], tmp_path / "cells")
    out = tmp_path / "cells.h5ad"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub.cache), "OMP_WAIT_POLICY": "PASSIVE"}
    env.pop("HF_HOME", None)
    proc = subprocess.run([sys.executable, "-m", "netformer", "embed", REPO, str(folder), "--subfolder", V2,
                           "--out", str(out), "--device", "cpu"], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ad.read_h5ad(out).obsm["X_netformer"].shape == (2, 768)
