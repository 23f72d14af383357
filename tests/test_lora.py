"""LoRA fine-tuning through peft: only the adapters and the head train, the classifier is saved as a peft
adapter beside its base checkpoint, and it loads back (merged) for prediction and perturbation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from netformer.errors import ConfigError


def test_lora_classifier_trains_adapters_saves_and_loads(tiny_pretrained, tmp_path):
    from netformer.classify import CellClassifier, FinetuneConfig
    from netformer.model import load_model
    from netformer.perturb import PerturbConfig, perturb

    labelled = [i for i, c in enumerate(tiny_pretrained.pbmc["cell_type"]) if c is not None]
    cells = tiny_pretrained.pbmc.select(labelled[:96])
    clf = CellClassifier(tiny_pretrained.model_dir, FinetuneConfig(epochs=1, lora=4, device="cpu",
                                                                     precision="fp32"))
    assert clf.config.lora == {"r": 4, "alpha": 16, "dropout": 0.05, "target_modules": ["query", "key", "value"]}
    clf.fit(cells, "cell_type")
    trained = {n for n, p in clf.model.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or "classifier" in n or "pooler" in n for n in trained)
    base = load_model(tiny_pretrained.model_dir, kind="base", device="cpu")
    frozen = dict(clf.model.get_base_model().bert.named_parameters())
    w = "encoder.layer.0.attention.self.query.base_layer.weight"
    assert torch.equal(frozen[w], base.state_dict()["encoder.layer.0.attention.self.query.weight"])
    probs = clf.predict_proba(cells)

    out = clf.save(tmp_path / "lora")
    files = {f.name for f in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "config.json"} <= files
    assert "model.safetensors" not in files  # adapters only, beside the base checkpoint
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tiny_pretrained.model_dir.resolve()) and adapter["r"] == 4

    again = CellClassifier.load(out, device="cpu")
    np.testing.assert_allclose(again.predict_proba(cells), probs, atol=1e-5)
    encoder = load_model(out, kind="base", device="cpu")  # merged: usable like any fine-tuned encoder
    res = perturb(encoder, tiny_pretrained.pbmc.select(range(1)), PerturbConfig(max_length=24, precision="fp32"),
                  vocab=tiny_pretrained.vocab).results
    assert len(res) > 5 and np.isfinite(res["cell_effect"]).all()


def test_lora_settings_are_validated():
    from netformer.classify import FinetuneConfig

    with pytest.raises(ConfigError, match="unknown LoRA settings"):
        FinetuneConfig(lora={"rank": 4})
    with pytest.raises(ConfigError, match="rank >= 1"):
        FinetuneConfig(lora=0)
    assert FinetuneConfig.from_dict(FinetuneConfig(lora={"r": 2}).to_dict()).lora["r"] == 2
