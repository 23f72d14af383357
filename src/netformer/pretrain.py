"""Masked gene pretraining (Geneformer's pretraining objective) with the Hugging Face Trainer.

15% of the gene tokens of each cell are selected; of those 80% become ``<mask>``, 10% a random gene
token and 10% stay unchanged (BERT's masking, as upstream via ``DataCollatorForLanguageModeling``);
the loss is cross-entropy on the selected positions. Batches are grouped by length (upstream
credits this with a 29x speed-up), AdamW with linear warm-up then linear (V1) or cosine (V2)
decay. Checkpoints are written every ``save_steps`` into ``output_dir/checkpoints`` and a
run that was interrupted resumes from the latest one when started again with the same
``output_dir``. The final model is a plain Hugging Face directory in ``output_dir/model``.

Multi-GPU / multi-node: the Trainer runs under Accelerate / torchrun unchanged, e.g.
``torchrun --nproc_per_node 8 -m netformer.cli pretrain DATA OUT --preset geneformer-v1-10m``
or ``accelerate launch -m netformer.cli pretrain ...``.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ._io import atomic_file, check_output
from .encoder import check_dataset, pad_batch
from .errors import ConfigError
from .genes import GeneVocab, resolve_vocab
from .model import model_config, new_model, save_model

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
    lr_scheduler
        ``"linear"`` (V1) or ``"cosine"`` (V2), after ``warmup_steps`` of linear warm-up.
    save_steps
        Checkpoint interval in optimisation steps (also the resume granularity).
    """

    preset: str = "small"
    model_overrides: dict | None = None
    max_length: int | None = None
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.001
    lr_scheduler: str = "linear"
    mlm_probability: float = 0.15
    save_steps: int = 200
    logging_steps: int = 10
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.mlm_probability < 1:
            raise ConfigError("mlm_probability must be in (0, 1)")
        if self.lr_scheduler not in ("linear", "cosine", "constant_with_warmup"):
            raise ConfigError("lr_scheduler must be 'linear', 'cosine' or 'constant_with_warmup'")


class GeneMaskingCollator:
    """Pads cells and applies BERT masking to gene tokens (special tokens are never selected).

    Returns ``input_ids``, ``attention_mask`` and ``labels`` (-100 where not selected) as long
    tensors of shape (batch, longest cell in the batch, at most ``max_length``).
    """

    def __init__(self, vocab: GeneVocab, max_length: int, mlm_probability: float = 0.15) -> None:
        self.pad_id = vocab.pad_id
        self.mask_id = vocab.mask_id
        self.special = torch.tensor(vocab.special_ids)
        self.gene_ids = torch.tensor(sorted(set(vocab.token_dict.values()) - set(vocab.special_ids)))
        self.max_length = max_length
        self.p = mlm_probability

    def __call__(self, features: Sequence[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_batch([f["input_ids"] for f in features], self.pad_id, self.max_length)
        labels = ids.clone()
        candidates = mask.bool() & ~torch.isin(ids, self.special)
        selected = (torch.rand(ids.shape) < self.p) & candidates
        labels[~selected] = -100
        to_mask = selected & (torch.rand(ids.shape) < 0.8)
        to_random = selected & ~to_mask & (torch.rand(ids.shape) < 0.5)
        ids[to_mask] = self.mask_id
        ids[to_random] = self.gene_ids[torch.randint(len(self.gene_ids), (int(to_random.sum()),))]
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


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
    return fast


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
        seed=cfg.seed,
        data_seed=cfg.seed,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        use_cpu=cfg.device == "cpu",
        # pinned host memory only helps copies to a GPU (and warns without one)
        dataloader_pin_memory=cfg.device != "cpu" and torch.cuda.is_available(),
    )
    params = inspect.signature(TrainingArguments).parameters
    if "train_sampling_strategy" in params:
        kw["train_sampling_strategy"] = "group_by_length"
    else:  # transformers < 5
        kw["group_by_length"] = True
    kw["length_column_name"] = "length"
    return TrainingArguments(**kw)


def pretrain(dataset, vocab: GeneVocab, output_dir: str | Path, config: PretrainConfig | None = None,
             overwrite: bool = False) -> PretrainResult:
    """Pretrain a BERT encoder by masked gene prediction.

    Parameters
    ----------
    dataset
        Tokenized :class:`datasets.Dataset` (``input_ids``, ``length``) from
        :class:`~netformer.tokenize.TranscriptomeTokenizer`.
    vocab
        The vocabulary the dataset was tokenized with (saved beside the model).
    output_dir
        Holds ``checkpoints/`` (resumable), ``model/`` (final), ``loss_history.json``.
        An existing directory with checkpoints but no final model is resumed; one with a final
        model raises :class:`~netformer.errors.OutputExistsError` unless ``overwrite``.

    Raises
    ------
    DictionaryError
        If the dataset's token ids exceed the vocabulary.
    """
    import time

    from transformers import Trainer
    from transformers.trainer_utils import get_last_checkpoint

    cfg = config or PretrainConfig()
    out = Path(output_dir)
    if (out / "model").exists():
        check_output(out / "model", overwrite)
    vocab = resolve_vocab(None, dataset, vocab)  # the cells' dictionary must be this one
    check_dataset(dataset, vocab.vocab_size)
    mcfg = model_config(cfg.preset, vocab=vocab, **(cfg.model_overrides or {}))
    max_len = min(cfg.max_length or mcfg.max_position_embeddings, mcfg.max_position_embeddings)
    model = masked_gene_model(mcfg, seed=cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("pretraining %s (%.2fM parameters) on %d cells, max length %d", cfg.preset, n_params / 1e6,
             len(dataset), max_len)
    out.mkdir(parents=True, exist_ok=True)
    args = _training_args(cfg, out, len(dataset))
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=dataset,
        data_collator=GeneMaskingCollator(vocab, max_len, cfg.mlm_probability),
    )
    resume = get_last_checkpoint(str(out / "checkpoints")) if (out / "checkpoints").exists() else None
    if resume:
        log.info("resuming from %s", resume)
    t0 = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.perf_counter() - t0
    history = [h for h in trainer.state.log_history if "loss" in h]
    if trainer.is_world_process_zero():  # under torchrun / accelerate only the main process writes
        save_model(_as_plain_mlm(trainer.model.cpu()), out / "model", vocab=vocab, overwrite=overwrite,
                   tokenizer=_tokenizer_settings(dataset))
        with atomic_file(out / "loss_history.json") as tmp:
            tmp.write_text(json.dumps({"config": asdict(cfg), "history": history}, indent=1, default=str))
    return PretrainResult(out / "model", history, seconds, len(dataset), trainer.state.global_step,
                          resumed_from=resume)


def _tokenizer_settings(dataset) -> dict | None:
    """The tokenizer settings a dataset records (see ``TranscriptomeTokenizer.settings``), or None."""
    from .genes import DATASET_INFO_KEY

    try:
        return json.loads(dataset.info.description or "{}").get(DATASET_INFO_KEY)
    except (ValueError, AttributeError):
        return None


def initial_mlm_loss(vocab_size: int) -> float:
    """Cross-entropy of a uniform guess over the vocabulary, ``ln(vocab_size)`` (nats)."""
    return math.log(vocab_size)


def plot_loss(history: list[dict], path: str | Path | None = None, title: str = "masked gene prediction loss",
              ax=None):
    """Training loss against optimisation step (``history``: ``PretrainResult.loss_history``, dicts with
    ``step`` and ``loss``). Draws on ``ax`` or a new figure; with ``path`` also writes a PNG. Returns the
    Matplotlib figure (made without pyplot; the backend is never switched)."""
    from ._io import new_figure, save_figure

    steps = np.array([h["step"] for h in history])
    loss = np.array([h["loss"] for h in history])
    fig, ax = new_figure(figsize=(6, 4)) if ax is None else (ax.figure, ax)
    ax.plot(steps, loss, marker="o", ms=3)
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("masked-token cross-entropy (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if path is not None:
        save_figure(fig, path)
    return fig
