"""A pretraining job run as its own process by tests/test_resume.py (it can be killed with SIGKILL).

    python tests/pretrain_job.py TOKENIZED OUT [--seed S] [--lr LR] [--kill-at STEP] [--overwrite]

``--kill-at STEP`` sends SIGKILL to this process right after the checkpoint of that step is written,
as a crash, an out-of-memory kill or a pre-empted cluster job would.
"""

from __future__ import annotations

import argparse
import os
import signal

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    import torch
    from transformers import TrainerCallback

    from netformer.genes import dataset_vocab
    from netformer.pretrain import PretrainConfig, pretrain
    from netformer.tokenize import load_tokenized

    p = argparse.ArgumentParser()
    p.add_argument("data")
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kill-at", type=int, default=None)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            if a.kill_at is not None and state.global_step == a.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    ds = load_tokenized(a.data).select_columns(["input_ids", "length"])
    cfg = PretrainConfig(preset="tiny", max_length=64, max_steps=24, batch_size=8, learning_rate=a.lr,
                         warmup_steps=2, save_steps=4, logging_steps=2, seed=a.seed, device="cpu")
    pretrain(ds, dataset_vocab(a.data)[0], a.out, cfg, overwrite=a.overwrite, callbacks=[KillAfterSave()])


if __name__ == "__main__":
    main()
