"""Damaged checkpoints and other inputs that used to give deep tracebacks: one line, exit 2, nothing written.

Also: a perturbation run on a single cell (fewer cells than the statistics' minimum) succeeds with exit 0,
and an output being replaced stays in place when the new one fails half-way.
"""

from __future__ import annotations

import os
import pickle
import shutil

import pytest

from netformer.cli import main


@pytest.fixture(scope="module")
def kang_folder(tiny_pretrained, tmp_path_factory):
    out = tmp_path_factory.mktemp("damaged") / "kang"
    tiny_pretrained.kang.select(range(995, 1005)).save_to_disk(str(out))
    tiny_pretrained.vocab.save(out / "vocab")
    return out


def run(capsys, *args) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code, capsys.readouterr().err


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/netformer_test_pwned",))


def _truncated(m):
    b = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(b[: len(b) // 3])


def _no_weights(m):
    (m / "model.safetensors").unlink()


def _bad_config(m):
    (m / "config.json").write_text("{not json")


def _malicious(m):
    (m / "model.safetensors").unlink()
    with open(m / "pytorch_model.bin", "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)


@pytest.mark.parametrize("damage,words", [(_truncated, "cannot load the model"), (_no_weights, "holds no weights"),
                                          (_bad_config, "not valid JSON"), (_malicious, "is refused")])
def test_damaged_checkpoints(tiny_pretrained, kang_folder, tmp_path, capsys, damage, words):
    model = tmp_path / "model"
    shutil.copytree(tiny_pretrained.model_dir, model)
    damage(model)
    for cmd in (["embed", model, kang_folder, "--out", tmp_path / "e.parquet"],
                ["perturb", model, kang_folder, "--out", tmp_path / "isp", "--max-cells", "1"]):
        code, err = run(capsys, *cmd)
        lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
        assert code == 2 and len(lines) == 1 and words in lines[0], err[-2000:]
        assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert not os.path.exists("/tmp/netformer_test_pwned")  # the pickle was never executed


def test_perturb_on_a_single_cell_succeeds(tiny_pretrained, kang_folder, tmp_path, capsys, caplog):
    one = tmp_path / "one"
    tiny_pretrained.kang.select([1000]).save_to_disk(str(one))
    tiny_pretrained.vocab.save(one / "vocab")
    code, err = run(capsys, "perturb", tiny_pretrained.model_dir, one, "--out", tmp_path / "isp", "--device", "cpu")
    assert code == 0, err[-2000:]
    assert (tmp_path / "isp" / "results.parquet").exists() and (tmp_path / "isp" / "genes.csv").exists()
    assert not (tmp_path / "isp" / "ranked_shifts.png").exists()  # nothing to rank: skipped with a line
    assert "ranked-shift plot skipped" in caplog.text


def test_a_failed_replacement_keeps_the_old_output(tmp_path):
    from netformer._io import atomic_dir

    with atomic_dir(tmp_path / "res") as tmp:
        (tmp / "v1.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "res", overwrite=True) as tmp:
            (tmp / "v2.txt").write_text("half")
            raise RuntimeError("killed half-way")
    assert [p.name for p in tmp_path.iterdir()] == ["res"]
    assert [p.name for p in (tmp_path / "res").iterdir()] == ["v1.txt"]
