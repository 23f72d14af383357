"""Configuration of fine-tuning (dataclasses), validated at construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Mapping

from ..errors import ConfigError

SCHEDULES = ("linear", "cosine", "constant", "constant_with_warmup", "polynomial")


@dataclass
class FinetuneConfig:
    """Settings of :class:`~netformer.classify.CellClassifier` / :class:`~netformer.classify.GeneClassifier`.

    Upstream Geneformer's ``Classifier`` fine-tunes with AdamW, a warm-up then decay schedule, the
    first layers optionally frozen, and a small number of epochs; the same knobs are exposed here.
    Defaults suit the small CPU models of this project (upstream's defaults for its 10M/104M models:
    lr 5e-5, 500 warm-up steps, weight decay 0.001, 1 epoch).

    Attributes
    ----------
    learning_rate
        Peak AdamW learning rate (default 5e-4).
    lr_scheduler
        One of ``linear``, ``cosine``, ``constant``, ``constant_with_warmup``, ``polynomial``
        (``transformers.get_scheduler`` names).
    warmup_ratio
        Fraction of the optimisation steps spent in linear warm-up (0 <= r < 1).
    weight_decay
        AdamW decoupled weight decay (biases and LayerNorm weights are not decayed).
    freeze_layers
        Freeze the token/position embeddings and the first N encoder layers (0: train all;
        -1 or N >= n_layers: train the head only).
    epochs
        Passes over the training cells.
    batch_size
        Cells per optimisation step (batches are length-bucketed, see :func:`netformer.embed.length_sorted_batches`).
    max_length
        Truncate cells to their top ``max_length`` ranked genes (default: the model's input size).
    class_weights
        ``None`` (unweighted cross-entropy), ``"balanced"`` (n / (k * n_c), sklearn's rule) or a
        mapping label -> weight.
    gradient_accumulation_steps
        Batches whose gradients are summed before each optimiser step (default 1). An optimiser step
        sees ``batch_size x gradient_accumulation_steps x processes`` cells: under ``torchrun`` each
        rank takes its own batches of every step (DistributedDataParallel averages the gradients).
    classifier_dropout
        Dropout before the head (default: the encoder's hidden dropout).
    attention_dropout
        Dropout on attention probabilities while fine-tuning (default 0.0). A deliberate change
        from upstream, which keeps the pretrained value (0.02 for Geneformer V1): with no attention
        dropout PyTorch's fused scaled-dot-product kernels run on CPU, and a training step is much
        faster (``benchmarks/finetune_pbmc.py speed`` times both). ``None`` keeps the model's own
        value, as upstream.
    select_best
        When a validation set is given, keep the weights of the epoch with the best validation
        macro-F1 (otherwise the last epoch's).
    seed
        Seeds head initialisation, batch order and dropout: same input + seed -> same model.
    device
        ``"cpu"``, ``"cuda"``, ...; default CUDA when available, else CPU.
    lora
        None (default: full fine-tuning), a LoRA rank, or a mapping of LoRA settings (``r``, ``alpha``,
        ``dropout``, ``target_modules``; defaults :data:`netformer.lora.LORA_DEFAULTS`: rank 8, alpha 16,
        dropout 0.05 on query/key/value). LoRA (Hu et al. 2021, through peft) trains low-rank updates
        of the attention projections and the whole head; the model is saved as a peft adapter
        beside the base checkpoint (:mod:`netformer.lora`). Meant for the V2 models.
    precision
        ``"fp32"`` (default), ``"bf16"`` or ``"auto"`` (:mod:`netformer.precision`): bf16 runs the
        forward passes (training and prediction) under bf16 autocast with float32 master weights.
        fp32 is the default: for the small models trained on CPUs autocast measured 1.1x (macro-F1
        -0.004 over 6 epochs); for a V2-104M-sized model it measured 2.1x (docs/precision.md), so pass
        ``auto`` for large models and on GPUs.
    """

    learning_rate: float = 5e-4
    lr_scheduler: str = "linear"
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    freeze_layers: int = 0
    epochs: int = 2
    batch_size: int = 16
    gradient_accumulation_steps: int = 1
    max_length: int | None = None
    class_weights: str | Mapping[str, float] | None = None
    classifier_dropout: float | None = None
    attention_dropout: float | None = 0.0
    select_best: bool = True
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"
    lora: int | dict | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from ..lora import lora_settings
        from ..precision import PRECISIONS

        self.lora = lora_settings(self.lora)

        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.lr_scheduler not in SCHEDULES:
            raise ConfigError(f"lr_scheduler {self.lr_scheduler!r} unknown; choose one of {SCHEDULES}")
        if not 0 <= self.warmup_ratio < 1:
            raise ConfigError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.weight_decay < 0:
            raise ConfigError("weight_decay must be >= 0")
        if self.epochs < 1:
            raise ConfigError("epochs must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.gradient_accumulation_steps < 1:
            raise ConfigError("gradient_accumulation_steps must be >= 1")
        if self.max_length is not None and self.max_length < 2:
            raise ConfigError("max_length must be at least 2 tokens")
        if self.attention_dropout is not None and not 0 <= self.attention_dropout < 1:
            raise ConfigError(f"attention_dropout must be in [0, 1) or None, got {self.attention_dropout}")
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            raise ConfigError("class_weights must be None, 'balanced' or a mapping label -> weight")

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["class_weights"] is not None and not isinstance(d["class_weights"], str):
            d["class_weights"] = {str(k): float(v) for k, v in dict(d["class_weights"]).items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "FinetuneConfig":
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown FinetuneConfig fields {sorted(unknown)}")
        return cls(**dict(d))
