"""Masked gene pretraining (Geneformer's pretraining objective) with the Hugging Face Trainer.

15% of the gene tokens of each cell are selected; of those 80% become ``<mask>``, 10% a random gene
token and 10% stay unchanged (BERT's masking, as upstream via ``DataCollatorForLanguageModeling``);
the loss is cross-entropy on the selected positions. Batches are grouped by length (upstream
credits this with a 29x speed-up), AdamW with linear warm-up then linear (V1) or cosine (V2)
decay. Checkpoints are written every ``save_steps`` into ``output_dir/checkpoints`` and a
run that was interrupted resumes from the latest one when started again with the same
``output_dir``. The final model is a plain Hugging Face directory in ``output_dir/model``.

Multi-GPU / multi-node: the Trainer runs under Accelerate / torchrun unchanged, e.g.
``torchrun --nproc_per_node 8 -m netformer pretrain DATA --out OUT --preset geneformer-v1-10m``
or ``accelerate launch -m netformer pretrain ...``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ._io import atomic_file, check_output, remove_dir, replace_dir
from ._state import preserved_rng
from .distributed import place, world
from .encoder import check_dataset, default_device, pad_batch
from .precision import resolve_precision
from .errors import ConfigError
from .genes import GeneVocab, resolve_vocab
from .model import PRESET_TRAINING, fix_positions, model_config, new_model, quiet_library_bars, save_model

log = logging.getLogger(__name__)


@dataclass
class PretrainConfig:
    """Settings of :func:`pretrain` (defaults: a short CPU run; Geneformer V1 used lr 1e-3,
    10k warm-up steps, weight decay 0.001, linear decay, batch 12 per GPU).

    Attributes
    ----------
    preset
        Model preset (see :mod:`netformer.model`); ``model_overrides`` change single fields.
    max_length
        Cells are truncated to this many tokens (default: the preset's input size).
    epochs, max_steps
        Training length; ``max_steps > 0`` overrides ``epochs``.
    learning_rate, weight_decay, lr_scheduler
        AdamW settings and the decay after ``warmup_steps`` of linear warm-up (``"linear"``, V1;
        ``"cosine"``, V2). Left as None, they are the preset's (:data:`netformer.model.PRESET_TRAINING`:
        upstream's recipe for the Geneformer presets, lr 1e-4 / weight decay 0.01 for ``netformer-seed``),
        else lr 1e-3, weight decay 0.001, linear.
    save_steps
        Checkpoint interval in optimisation steps (also the resume granularity).
    precision
        ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` (:mod:`netformer.precision`): bf16 trains with
        float32 master weights under bf16 autocast (the Trainer's ``bf16=True``). The default is fp32
        because for the small CPU models autocast measured 1.1x; at V2-104M size it measured 2.1x
        (docs/precision.md): pass ``auto`` for large models and on GPUs.
    """

    preset: str = "small"
    model_overrides: dict | None = None
    max_length: int | None = None
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    learning_rate: float | None = None
    warmup_steps: int = 100
    weight_decay: float | None = None
    lr_scheduler: str | None = None
    mlm_probability: float = 0.15
    save_steps: int = 200
    logging_steps: int = 10
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"

    def __post_init__(self) -> None:
        from .model import PRESETS
        from .precision import PRECISIONS

        if self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        recipe = {"learning_rate": 1e-3, "weight_decay": 0.001, "lr_scheduler": "linear",
                  **PRESET_TRAINING.get(self.preset, {})}
        for name, value in recipe.items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("mlm_probability must be in (0, 1)")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(f"lr_scheduler must be one of {LR_SCHEDULERS}, got {self.lr_scheduler!r}")
        for name in ("batch_size", "save_steps", "logging_steps"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.max_steps <= 0 and not self.epochs > 0:
            raise ConfigError("give a positive number of epochs or max_steps")
        if not self.learning_rate > 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ConfigError("learning_rate must be positive, warmup_steps and weight_decay non-negative")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError("max_length must be at least 2 tokens")

    def run_settings(self) -> dict:
        """The settings a resumed run must share with the run it resumes (everything but the run
        length, which may be extended, and the device)."""
        d = asdict(self)
        for k in ("epochs", "max_steps", "device", "logging_steps"):
            d.pop(k)
        return d


LR_SCHEDULERS = ("linear", "cosine", "constant_with_warmup")


class GeneMaskingCollator:
    """Pads cells and applies BERT masking to gene tokens (special tokens are never selected).

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not selected) as long
    tensors of shape (batch, longest cell in the batch, at most ``max_length``).

    The masking of each cell is drawn from its own generator, seeded by ``(seed, epoch, the cell's
    token ids)``, never from the global RNG: a run resumed from a mid-epoch checkpoint masks every
    later batch exactly as the uninterrupted run did (the Trainer restores the global RNG, used by
    dropout, only after it has fetched the first resumed batch), and a cell is masked the same way
    whatever batch it is in: a 2-process DDP run masks its cells as a 1-process run with the same
    global batch. ``epoch`` is set by :class:`EpochLengthSampler`. (Upstream draws from the global RNG,
    the transformers ``DataCollatorForLanguageModeling``.)
    """

    def __init__(self, vocab: GeneVocab, max_length: int, mlm_probability: float = 0.15, seed: int = 0) -> None:
        self.pad_id = vocab.pad_id
        self.mask_id = vocab.mask_id
        self.special = torch.tensor(vocab.special_ids)
        self.gene_ids = torch.tensor(sorted(set(vocab.token_dict.values()) - set(vocab.special_ids)))
        self.max_length = max_length
        self.p = mlm_probability
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _generator(self, ids: torch.Tensor) -> torch.Generator:
        import hashlib

        h = hashlib.blake2b(np.array([self.seed, self.epoch], dtype=np.int64).tobytes(), digest_size=8)
        h.update(ids.numpy().astype(np.int64).tobytes())
        return torch.Generator().manual_seed(int.from_bytes(h.digest(), "little") & (2**63 - 1))

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([f["input_ids"] for f in features], self.pad_id, self.max_length)
        # per cell: which positions are selected, masked, replaced, and by which gene
        draws = torch.ones((3, *ids.shape))
        genes = torch.zeros(ids.shape, dtype=torch.long)
        for i, n in enumerate(mask.sum(1).tolist()):
            g = self._generator(ids[i, :n])
            draws[:, i, :n] = torch.rand((3, n), generator=g)
            genes[i, :n] = torch.randint(len(self.gene_ids), (n,), generator=g)
        labels = ids.clone()
        candidates = mask.bool() & ~torch.isin(ids, self.special)
        selected = (draws[0] < self.p) & candidates
        labels[~selected] = -100
        to_mask = selected & (draws[1] < 0.8)
        to_random = selected & ~to_mask & (draws[2] < 0.5)
        ids[to_mask] = self.mask_id
        ids[to_random] = self.gene_ids[genes[to_random]]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _epoch_sampler_class():
    from transformers.trainer_pt_utils import LengthGroupedSampler

    class EpochLengthSampler(LengthGroupedSampler):
        """Length-grouped batches (upstream's ``LengthGroupedSampler`` grouping) in an order drawn from
        a generator seeded by ``(seed, epoch)`` alone, so a resumed run sees the same order; tells the
        collator the epoch."""

        def __init__(self, batch_size: int, lengths, seed: int, collator: GeneMaskingCollator) -> None:
            super().__init__(batch_size, lengths=lengths)
            self.seed, self.collator, self.epoch = int(seed), collator, 0

        def set_epoch(self, epoch: int) -> None:
            self.epoch = int(epoch)
            self.collator.set_epoch(epoch)

        def __iter__(self):
            self.generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            return super().__iter__()

    return EpochLengthSampler


def _progress_callback():
    from transformers import TrainerCallback

    from .progress import Progress

    class ProgressLog(TrainerCallback):
        """Pretraining progress through :mod:`netformer.progress` (one bar; lines in any log) and the
        Trainer's logs as numbers: ``step 40/507: loss 9.3280, learning rate 3.90e-04, grad norm 0.566``."""

        bar = None

        def on_train_begin(self, args, state, control, **kw):
            if state.is_world_process_zero:
                self.bar = Progress(state.max_steps, "pretraining", unit="step", logger=log, initial=state.global_step)

        def on_step_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.update(state.global_step - self.bar.done)

        def on_log(self, args, state, control, logs=None, **kw):
            if not state.is_world_process_zero or not logs:
                return
            names = {"loss": ("loss", "%.4f"), "learning_rate": ("learning rate", "%.2e"),
                     "grad_norm": ("grad norm", "%.3f"), "epoch": ("epoch", "%.2f"),
                     "train_loss": ("mean training loss", "%.4f"), "train_runtime": ("seconds", "%.1f")}
            parts = [f"{label} {fmt % float(logs[k])}" for k, (label, fmt) in names.items()
                     if isinstance(logs.get(k), (int, float))]
            if parts:
                log.info("step %d/%d: %s", state.global_step, state.max_steps, ", ".join(parts))

        def on_train_end(self, args, state, control, **kw):
            if self.bar is not None:
                self.bar.close()
                self.bar = None

    return ProgressLog


def _trainer(model, args, dataset, collator, callbacks=()):
    """A Hugging Face Trainer whose training order depends on (seed, epoch) only (see :class:`GeneMaskingCollator`)."""
    from transformers import Trainer

    sampler_cls = _epoch_sampler_class()

    class _GeneTrainer(Trainer):
        def _get_train_sampler(self, train_dataset=None):
            ds = train_dataset if train_dataset is not None else self.train_dataset
            lengths = ds["length"] if "length" in ds.column_names else [len(x) for x in ds["input_ids"]]
            # grouped by the global batch: Accelerate deals its batches to the ranks in turn, so every step
            # holds the cells of one process's step with the same global batch
            return sampler_cls(self.args.train_batch_size * self.args.gradient_accumulation_steps
                               * self.args.world_size, lengths, self.args.seed, collator)

    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer = _GeneTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                           callbacks=[_progress_callback()(), *callbacks])
    for cb in (PrinterCallback, ProgressCallback):  # our one progress display and numeric log lines instead
        trainer.remove_callback(cb)
    # transformers 5 multiplies the loss of a model whose forward takes **kwargs by the number of processes,
    # expecting the model to divide by the masked genes of all of them; BertForMaskedLM averages over its own
    # batch instead, so on 2 processes its loss and gradient came out doubled. Without the flag each rank's
    # loss is its batch's mean and DDP averages the gradients over the ranks (equal to one process with the
    # global batch up to the ranks' different numbers of masked genes).
    trainer.model_accepts_loss_kwargs = False
    return trainer


def masked_gene_model(config, seed: int = 0):
    """A ``BertForMaskedLM`` whose training forward pass scores only the masked positions.

    Upstream (and Hugging Face's ``BertForMaskedLM``) computes the output layer, a
    (hidden x vocab_size) projection, at every position and then ignores 85% of it; with a 20-25k
    gene vocabulary that projection costs more than the encoder for small models. Here the output
    head runs on the ~15% selected positions only, which gives the same loss and gradients. The
    weights are those of ``BertForMaskedLM`` (same parameter names), so checkpoints load in upstream
    code unchanged.
    """
    from transformers import BertForMaskedLM
    from transformers.modeling_outputs import MaskedLMOutput

    class _MaskedGeneLM(BertForMaskedLM):
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            if labels is None:
                return super().forward(input_ids=input_ids, attention_mask=attention_mask, **kwargs)
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)[0]
            selected = labels != -100
            logits = self.cls(hidden[selected])
            loss = torch.nn.functional.cross_entropy(logits.float(), labels[selected])
            return MaskedLMOutput(loss=loss, logits=logits)

    model = new_model(config, seed=seed)
    fast = _MaskedGeneLM(config)
    fast.load_state_dict(model.state_dict())
    return fix_positions(fast)


def _as_plain_mlm(model):
    """Copy weights into a plain ``BertForMaskedLM`` (so config.json names the upstream class)."""
    from transformers import BertForMaskedLM

    plain = BertForMaskedLM(model.config)
    plain.load_state_dict(model.state_dict())
    return plain


@dataclass
class PretrainResult:
    """Where the model went and how the loss moved (per logged step)."""

    model_dir: Path
    loss_history: list[dict]
    train_seconds: float
    n_cells: int
    n_steps: int
    resumed_from: str | None = None


def _training_args(cfg: PretrainConfig, out: Path, n_cells: int):
    import torch
    from transformers import TrainingArguments

    kw = dict(
        output_dir=str(out / "checkpoints"),
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        lr_scheduler_type=cfg.lr_scheduler,
        num_train_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        save_strategy="steps",
        save_steps=cfg.save_steps,
        save_total_limit=2,
        logging_steps=cfg.logging_steps,
        report_to="none",
        disable_tqdm=True,  # netformer.progress shows one bar and logs the steps (ProgressLog)
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=default_device(cfg.device).type == "cpu",  # CPU-only machines: gloo DDP under torchrun
        ddp_find_unused_parameters=False,
        # pinned host memory only helps copies to a GPU (and warns without one)
        dataloader_pin_memory=cfg.device != "cpu" and torch.cuda.is_available(),
        bf16=cfg.precision == "bf16",  # autocast over float32 master weights
    )
    params = inspect.signature(TrainingArguments).parameters
    if "train_sampling_strategy" in params:
        kw["train_sampling_strategy"] = "group_by_length"
    else:  # transformers < 5
        kw["group_by_length"] = True
    kw["length_column_name"] = "length"
    return TrainingArguments(**kw)


RUN_FILE = "pretrain_run.json"
CHECKPOINT_FILES = ("trainer_state.json", "optimizer.pt", "scheduler.pt", "config.json")


def pretrain(dataset, vocab: GeneVocab, output_dir: str | Path, config: PretrainConfig | None = None,
             overwrite: bool = False, callbacks: Sequence = ()) -> PretrainResult:
    """Pretrain a BERT encoder by masked gene prediction.

    Parameters
    ----------
    dataset
        Tokenized :class:`datasets.Dataset` (``input_ids``, ``length``) from
        :class:`~netformer.tokenize.TranscriptomeTokenizer`.
    vocab
        The vocabulary the dataset was tokenized with (saved beside the model, with the tokenizer
        settings the dataset records).
    output_dir
        Holds ``checkpoints/`` (resumable), ``model/`` (final), ``loss_history.json`` and
        ``pretrain_run.json`` (the run's settings and data). A folder with checkpoints but no final
        model is resumed, from the newest complete checkpoint (an incomplete one, left by a kill
        during its write, is set aside as ``checkpoints/incomplete-checkpoint-N`` with a log line);
        resuming reproduces the uninterrupted run exactly (same batches, masks and dropout).
        Resuming with other settings or data raises :class:`ConfigError` (only ``epochs`` /
        ``max_steps`` may change, to extend a run). A folder with a final model raises
        :class:`~netformer.errors.OutputExistsError` unless ``overwrite``.
    overwrite
        Start afresh even if ``output_dir`` holds a run. The new run trains in a staging folder
        beside it (``.NAME.overwrite``) and replaces the old one only when complete, so a kill
        leaves the old results in place.
    callbacks
        Extra ``transformers.TrainerCallback`` objects.

    Raises
    ------
    DictionaryError
        The dataset was tokenized with another dictionary, or holds token ids beyond it.
    InputDataError
        Empty dataset or empty cells.
    ConfigError
        Resuming with other settings; invalid settings (checked by :class:`PretrainConfig`).
    """

    cfg = config or PretrainConfig()
    cfg = replace(cfg, precision=resolve_precision(cfg.precision, default_device(cfg.device)))
    final = Path(output_dir)
    vocab = resolve_vocab(None, dataset, vocab)  # the cells' dictionary must be this one
    check_dataset(dataset, vocab.vocab_size)
    mcfg = model_config(cfg.preset, vocab=vocab, **(cfg.model_overrides or {}))
    max_len = min(cfg.max_length or mcfg.max_position_embeddings, mcfg.max_position_embeddings)
    # the number of processes fixes the global batch and the cells of each step: a resume keeps it
    run = {"settings": {**cfg.run_settings(), "processes": world().size}, "data": _data_fingerprint(dataset),
           "vocab_digest": vocab.digest}
    out = _run_folder(final, run, overwrite)
    with preserved_rng():  # the Trainer seeds the global generators; the caller's streams are put back
        return _train(dataset, vocab, cfg, mcfg, max_len, out, final, callbacks)


def _train(dataset, vocab: GeneVocab, cfg: PretrainConfig, mcfg, max_len: int, out: Path, final: Path,
           callbacks: Sequence) -> PretrainResult:
    import time

    place(cfg.device)  # a rank of a torchrun job: its GPU, or its share of the CPU threads
    model = masked_gene_model(mcfg, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretraining %s (%.2fM parameters) on %d cells, max length %d, in %s", cfg.preset, n_params / 1e6,
             len(dataset), max_len, out)
    args = _training_args(cfg, out, len(dataset))
    collator = GeneMaskingCollator(vocab, max_len, cfg.mlm_probability, seed=cfg.seed)
    trainer = _trainer(model, args, dataset, collator, callbacks)
    resume = _last_complete_checkpoint(out / "checkpoints") if trainer.is_world_process_zero() else \
        _last_complete_checkpoint(out / "checkpoints", set_aside=False)
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    with quiet_library_bars():  # no "Writing model shards" bar inside the training bar at every checkpoint
        trainer.train(resume_from_checkpoint=resume)
        seconds = time.perf_counter() - t0
        history = [h for h in trainer.state.log_history if "loss" in h]
        if trainer.is_world_process_zero():  # under torchrun / accelerate only the main process writes
            save_model(_as_plain_mlm(trainer.model.cpu()), out / "model", vocab=vocab, overwrite=True,
                       tokenizer=_tokenizer_settings(dataset))
        with atomic_file(out / "loss_history.json") as tmp:
            tmp.write_text(json.dumps({"config": asdict(cfg), "history": history}, indent=1, default=str))
        if out != final:
            replace_dir(out, final)
    return PretrainResult(final / "model", history, seconds, len(dataset), trainer.state.global_step,
                          resumed_from=resume)


def _data_fingerprint(dataset) -> dict:
    """Number of cells and a digest of the lengths and the first, middle and last cells' tokens
    (bounded work for a corpus of any size)."""
    import hashlib

    from .runs import tokens_digest

    n = len(dataset)
    h = hashlib.sha256(tokens_digest(dataset, sorted({0, n // 2, n - 1})).encode())
    if "length" in dataset.column_names:
        lengths = dataset.select_columns(["length"]).with_format("arrow")[:]["length"]
        h.update(np.asarray(lengths.to_numpy(zero_copy_only=False), dtype=np.int64).tobytes())
    return {"n_cells": n, "digest": h.hexdigest()[:16]}


def _run_folder(final: Path, run: dict, overwrite: bool) -> Path:
    """Where this run trains: ``final`` (new or resumed) or, with ``overwrite`` over an existing run, a
    staging folder beside it. Refuses a finished run without ``overwrite`` and a resume with other
    settings; writes ``pretrain_run.json``."""
    has_run = (final / "model").exists() or (final / "checkpoints").exists() or (final / RUN_FILE).exists()
    if has_run and overwrite:
        out = final.parent / f".{final.name}.overwrite"
        if world().is_main:
            remove_dir(out)  # a staging folder left by a killed overwrite
    else:
        out = final
        if (final / "model").exists():
            check_output(final / "model", overwrite=False)
        if (final / RUN_FILE).exists():
            old = json.loads((final / RUN_FILE).read_text())
            recorded = {"processes": 1, **old.get("settings", {})}  # runs of older versions ran in one process
            diff = [k for k in run["settings"] if recorded.get(k) != run["settings"][k]]
            if old.get("data") != run["data"] or old.get("vocab_digest") != run["vocab_digest"]:
                diff.append("the tokenized cells")
            if diff:
                raise ConfigError(f"{final} holds an unfinished run with other settings ({', '.join(diff)}); "
                                  "resume with the same settings and data, choose another output folder, or pass "
                                  "overwrite=True (CLI: --overwrite) to start afresh")
    out.mkdir(parents=True, exist_ok=True)
    if world().is_main:
        with atomic_file(out / RUN_FILE) as tmp:
            tmp.write_text(json.dumps(run, indent=1, default=str))
    return out


def _last_complete_checkpoint(folder: Path, set_aside: bool = True) -> str | None:
    """The newest checkpoint of ``folder`` that holds every file a resume needs; incomplete newer ones
    (a kill during their write) are renamed ``incomplete-checkpoint-N`` with a log line."""
    if not folder.is_dir():
        return None
    ckpts = sorted((p for p in folder.iterdir() if p.is_dir() and p.name.startswith("checkpoint-")
                    and p.name.split("-")[-1].isdigit()), key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for ck in ckpts:
        complete = all((ck / f).exists() for f in CHECKPOINT_FILES) and any(
            (ck / f).exists() for f in ("model.safetensors", "pytorch_model.bin"))
        if complete:
            try:
                json.loads((ck / "trainer_state.json").read_text())
                return str(ck)
            except ValueError:
                pass
        if set_aside:
            dest = ck.with_name(f"incomplete-{ck.name}")
            remove_dir(dest)
            os.replace(ck, dest)
            log.warning("checkpoint %s is incomplete (a run killed while writing it); set aside as %s, "
                        "resuming from the previous one", ck, dest.name)
    return None


def _tokenizer_settings(dataset) -> dict | None:
    """The tokenizer settings a dataset records (see ``TranscriptomeTokenizer.settings``), or None."""
    from .genes import dataset_settings

    return dataset_settings(dataset) or None


def initial_mlm_loss(vocab_size: int) -> float:
    """Cross-entropy of a uniform guess over the vocabulary, ``ln(vocab_size)`` (nats)."""
    return math.log(vocab_size)


def plot_loss(history: list[dict], path: str | Path | None = None, title: str = "masked gene prediction loss",
              ax=None, uniform_loss: float | None = None):
    """Training loss against optimisation step (``history``: ``PretrainResult.loss_history``, dicts with
    ``step`` and ``loss``). Draws on ``ax`` or a new figure; with ``path`` also writes a PNG. With
    ``uniform_loss`` (nats; :func:`initial_mlm_loss`, ``ln(vocabulary size)``) a dashed line marks the loss of a
    uniform guess. Returns the Matplotlib figure (made without pyplot; the backend is never switched)."""
    from ._io import new_figure, save_figure

    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    fig, ax = new_figure(figsize=(6, 4)) if ax is None else (ax.figure, ax)
    ax.plot(steps, loss, marker="o", ms=3, label="training loss")
    if uniform_loss is not None:
        ax.axhline(uniform_loss, color="grey", ls="--", lw=1, label=f"uniform guess ({uniform_loss:.2f})")
        ax.legend(frameon=False)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("masked-token cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if path is not None:
        save_figure(fig, path)
    return fig
