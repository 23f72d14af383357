"""Fine-tuned cell and gene classifiers on a pretrained BERT encoder (Geneformer ``Classifier``).

- :class:`CellClassifier`: ``BertForSequenceClassification`` - the ``<cls>`` position's pooled state
  (the first token for dictionaries without ``<cls>``, as upstream V1) feeds a linear head, one
  label per cell (cell type, cell state, disease).
- :class:`GeneClassifier`: ``BertForTokenClassification`` - a label per gene token; tokens of genes
  without a training label get the ignore index -100, so the loss only sees labelled genes. A gene's
  prediction is its class probabilities averaged over every cell in which it occurs (upstream
  evaluates gene classifiers the same way, per gene over cells).

Training is a plain PyTorch loop: cells are grouped into batches of similar length
(:func:`netformer.embed.length_sorted_batches`, less padding), the order of the batches is shuffled
per epoch with the configured seed, AdamW with decoupled weight decay (no decay on biases and
LayerNorm), a warm-up then decay schedule (``transformers.get_scheduler``), cross-entropy with
optional class weights. Runs on CUDA when available, else CPU.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._io import atomic_dir
from ..distributed import all_reduce_sum, barrier, split_evenly, sync_gradients, world
from ..distributed import init as init_world
from ..encoder import check_dataset, default_device, length_sorted_batches, pad_batch
from ..lora import add_lora
from ..precision import autocast, resolve_precision
from ..progress import Progress
from ..errors import ConfigError, DictionaryError, InputDataError
from ..genes import GeneVocab, model_vocab, resolve_vocab
from .._state import preserved_rng
from ..model import check_model_dir, load_model, save_model, tokenizer_settings
from .config import FinetuneConfig
from .data import get_labels, resolve_gene_labels
from .metrics import classification_metrics
from .splits import check_labels

log = logging.getLogger(__name__)

META_FILE = "netformer_classifier.json"


def _class_weights(cfg: FinetuneConfig, classes: list[str], counts: np.ndarray) -> torch.Tensor | None:
    if cfg.class_weights is None:
        return None
    if cfg.class_weights == "balanced":
        w = counts.sum() / (len(classes) * np.clip(counts, 1, None))
    else:
        cw = {str(k): float(v) for k, v in dict(cfg.class_weights).items()}
        missing = [c for c in classes if c not in cw]
        if missing:
            raise ConfigError(f"class_weights has no weight for classes {missing}")
        w = np.array([cw[c] for c in classes])
    return torch.tensor(w, dtype=torch.float32)


class _Finetuner:
    """Shared machinery of the cell and gene classifiers (not public)."""

    kind = ""

    def __init__(self, model_dir: str | Path, config: FinetuneConfig | None = None) -> None:
        self.model_dir = check_model_dir(model_dir)
        self.config = config or FinetuneConfig()
        self.vocab: GeneVocab | None = model_vocab(self.model_dir)
        self.model = None
        self.classes_: list[str] | None = None
        self.history_: list[dict] = []
        self.train_info_: dict = {}

    # -- model ---------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return default_device(self.config.device)

    @property
    def precision(self) -> str:
        """The resolved precision (``fp32`` / ``bf16``) of :attr:`FinetuneConfig.precision` on the device."""
        return resolve_precision(self.config.precision, self.device)

    def _build(self, classes: list[str]) -> None:
        cfg = self.config
        with preserved_rng(cfg.seed):  # the head's initialisation; the caller's random streams are left alone
            self._build_seeded(classes)

    def _build_seeded(self, classes: list[str]) -> None:
        cfg = self.config
        kw = dict(num_labels=len(classes), id2label=dict(enumerate(classes)),
                  label2id={c: i for i, c in enumerate(classes)})
        if cfg.classifier_dropout is not None:
            kw["classifier_dropout"] = cfg.classifier_dropout
        if cfg.attention_dropout is not None:
            kw["attention_probs_dropout_prob"] = cfg.attention_dropout
        model = load_model(self.model_dir, kind=self.kind, device=self.device, **kw)
        n_layers = len(model.bert.encoder.layer)
        n_freeze = n_layers if cfg.freeze_layers < 0 else min(cfg.freeze_layers, n_layers)
        if n_freeze > 0:
            for p in model.bert.embeddings.parameters():
                p.requires_grad = False
            for layer in model.bert.encoder.layer[:n_freeze]:
                for p in layer.parameters():
                    p.requires_grad = False
        if cfg.lora:
            model = add_lora(model, cfg.lora, self.kind, self.model_dir)
            n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log.info("LoRA rank %d on %s: %.2fM of %.2fM parameters trained", cfg.lora["r"],
                     "/".join(cfg.lora["target_modules"]), n_train / 1e6, sum(p.numel() for p in model.parameters()) / 1e6)
        self.model = model
        self.classes_ = list(classes)

    def _max_length(self) -> int:
        base = self.model.config.max_position_embeddings if self.model is not None else 2048
        return min(self.config.max_length or base, base)

    def _check_data(self, dataset, dataset_dir=None) -> None:
        """The one vocabulary policy and the one dataset check (``dataset_dir``: the tokenized folder
        the cells came from, when the dataset object does not record its dictionary)."""
        self.vocab = resolve_vocab(self.model_dir, dataset if dataset_dir is None else dataset_dir, self.vocab)
        check_dataset(dataset, self.vocab.vocab_size)

    def _pad_id(self) -> int:
        return self.model.config.pad_token_id or 0

    def _optimizer(self, n_steps: int):
        from transformers import get_scheduler

        cfg = self.config
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if name.endswith("bias") or "LayerNorm" in name else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.learning_rate)
        sched = get_scheduler(cfg.lr_scheduler, opt, num_warmup_steps=int(round(cfg.warmup_ratio * n_steps)),
                              num_training_steps=n_steps)
        return opt, sched

    def _train_loop(self, seqs: list, batch_targets, weights, val_score=None) -> None:
        """Optimise over ``seqs`` (token id lists); ``batch_targets(idx, ids)`` gives the label
        tensor of a batch; ``val_score()`` (optional) returns validation macro-F1 after each epoch.

        Under ``torchrun`` (:mod:`netformer.distributed`) the model is wrapped in PyTorch's
        ``DistributedDataParallel`` and each rank takes its share of every epoch's batches."""
        cfg = self.config
        device = self.device
        w = init_world(device)
        max_len = self._max_length()
        lengths = [min(len(s), max_len) for s in seqs]
        batches = length_sorted_batches(lengths, cfg.batch_size)
        per_rank = len(split_evenly(range(len(batches)), w))
        if per_rank == 0:
            raise ConfigError(f"{len(seqs)} training cells make {len(batches)} batches of {cfg.batch_size}, fewer than the "
                              f"{w.size} processes: lower the batch size or use fewer processes")
        n_steps = -(-per_rank // cfg.gradient_accumulation_steps) * cfg.epochs
        opt, sched = self._optimizer(n_steps)
        loss_fn = torch.nn.CrossEntropyLoss(weight=None if weights is None else weights.to(device), ignore_index=-100)
        net = self.model
        if w.distributed:
            net = torch.nn.parallel.DistributedDataParallel(  # a token classifier leaves the pooler unused
                self.model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=self.kind == "gene")
            log.info("%s fine-tuning on %d processes: %d cells per optimiser step", self.kind, w.size,
                     w.size * cfg.batch_size * cfg.gradient_accumulation_steps)
        with preserved_rng(cfg.seed):  # dropout draws from torch's global generator: give it back afterwards
            self._epochs(net, seqs, batches, batch_targets, opt, sched, loss_fn, val_score)

    def _epochs(self, net, seqs, batches, batch_targets, opt, sched, loss_fn, val_score) -> None:
        cfg = self.config
        device = self.device
        max_len = self._max_length()
        rng = np.random.default_rng(cfg.seed)
        precision = self.precision
        accum = cfg.gradient_accumulation_steps
        best, best_state = -np.inf, None
        self.history_ = []
        bar = Progress(cfg.epochs * len(split_evenly(np.arange(len(batches)))), f"{self.kind} fine-tuning",
                       unit="batch", logger=log)
        for epoch in range(cfg.epochs):
            self.model.train()
            t0 = time.perf_counter()
            sums = torch.zeros(2, dtype=torch.float64)  # loss x cells, cells (all ranks, for the log)
            order = split_evenly(rng.permutation(len(batches)))  # the same permutation on every rank
            opt.zero_grad(set_to_none=True)
            for i, b in enumerate(order):
                bar.update()
                idx = batches[b]
                ids, mask = pad_batch([seqs[i] for i in idx], self._pad_id(), max_len)
                target = batch_targets(idx, ids)
                ids, mask, target = ids.to(device), mask.to(device), target.to(device)
                step = (i + 1) % accum == 0 or i + 1 == len(order)
                with sync_gradients(net, step), autocast(precision, device):
                    logits = net(input_ids=ids, attention_mask=mask).logits
                    loss = loss_fn(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))
                (loss / accum if accum > 1 else loss).backward()
                if step:
                    torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                sums += torch.tensor([float(loss.detach()) * len(idx), len(idx)], dtype=torch.float64)
            sums = all_reduce_sum(sums)
            rec = {"epoch": epoch + 1, "train_loss": float(sums[0] / max(sums[1], 1)),
                   "seconds": time.perf_counter() - t0, "n_train": len(seqs)}
            if val_score is not None:
                rec["val_macro_f1"] = val_score()
                if cfg.select_best and rec["val_macro_f1"] > best:
                    best = rec["val_macro_f1"]
                    best_state = copy.deepcopy(self.model.state_dict())
            log.info("%s epoch %d/%d: train loss %.4f, %.1f s, %d cells%s", self.kind, epoch + 1, cfg.epochs,
                     rec["train_loss"], rec["seconds"], rec["n_train"],
                     f", validation macro-F1 {rec['val_macro_f1']:.4f}" if "val_macro_f1" in rec else "")
            self.history_.append(rec)
        bar.close()
        if best_state is not None:
            self.model.load_state_dict(best_state)
        self.model.eval()

    def _forward_probs(self, seqs: list, batch_size: int | None = None):
        """Yield (indices, probabilities, ids, mask) over length-sorted batches in inference mode."""
        if self.model is None:
            raise ConfigError("the classifier is not fitted; call fit() or load() first")
        device = self.device
        self.model.to(device).eval()
        max_len = self._max_length()
        batches = length_sorted_batches([len(s) for s in seqs], batch_size or max(self.config.batch_size, 32))
        with torch.inference_mode(), autocast(self.precision, device):
            for idx in batches:
                ids, mask = pad_batch([seqs[i] for i in idx], self._pad_id(), max_len)
                logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
                yield idx, torch.softmax(logits.float(), -1), ids, mask

    @property
    def seconds_per_epoch(self) -> float:
        """Mean wall time of a training epoch (s)."""
        return float(np.mean([h["seconds"] for h in self.history_])) if self.history_ else float("nan")

    # -- persistence -----------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write a plain Hugging Face model directory (loadable with
        ``BertFor{Sequence,Token}Classification.from_pretrained``) plus the vocabulary and
        ``netformer_classifier.json`` (task, classes, config, training history and the training
        cells/genes that the baseline needs), atomically. Under torchrun rank 0 writes it, the others wait."""
        if self.model is None:
            raise ConfigError("nothing to save: the classifier is not fitted")
        if world().distributed:  # under torchrun rank 0 writes; every rank returns once it is written
            if world().is_main:
                self._write(path, overwrite)
            barrier()
            return Path(path)
        return self._write(path, overwrite)

    def _write(self, path: str | Path, overwrite: bool) -> Path:
        with atomic_dir(path, overwrite=overwrite) as tmp:
            save_model(self.model.cpu(), tmp, vocab=self.vocab, overwrite=True,
                       tokenizer=tokenizer_settings(self.model_dir))
            meta = {"task": self.kind, "classes": self.classes_, "config": self.config.to_dict(),
                    "history": self.history_, "train": self.train_info_, "base_model": str(self.model_dir)}
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1, default=str))
        self.model.to(self.device)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path, device: str | None = None):
        """Load a classifier written by :meth:`save` (raises :class:`ConfigError` for another task)."""
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise ConfigError(f"{path} holds no {META_FILE}; it is not a saved netformer classifier")
        meta = json.loads(meta_path.read_text())
        if meta["task"] != cls.kind:
            raise ConfigError(f"{path} holds a {meta['task']} classifier, not a {cls.kind} classifier")
        cfg = FinetuneConfig.from_dict(meta["config"])
        if device is not None:
            cfg.device = device
        obj = cls(path, cfg)
        obj.model = load_model(path, kind=cls.kind, device=obj.device)
        obj.classes_ = list(meta["classes"])
        obj.history_ = meta["history"]
        obj.train_info_ = meta["train"]
        return obj


class CellClassifier(_Finetuner):
    """Fine-tune a pretrained encoder to classify cells (sequence classification head).

    Parameters
    ----------
    model_dir
        Pretrained model directory (ours, with its vocabulary, or a published Geneformer one).
    config
        :class:`FinetuneConfig`.

    Examples
    --------
    >>> clf = CellClassifier("pretrained/model", FinetuneConfig(epochs=2))  # doctest: +SKIP
    >>> clf.fit(train_ds, "cell_type")  # doctest: +SKIP
    >>> clf.predict(test_ds).head()  # doctest: +SKIP
    """

    kind = "cell"

    def fit(self, dataset, labels: str | Sequence = "cell_type", eval_dataset=None, eval_labels=None,
            dataset_dir: str | Path | None = None) -> "CellClassifier":
        """Fine-tune on ``dataset`` (tokenized cells) with ``labels`` (a column name or a sequence).

        ``eval_dataset`` (+ ``eval_labels``, default the same column): validation cells; with
        ``config.select_best`` the epoch with the best validation macro-F1 is kept.

        Raises
        ------
        InputDataError
            Missing labels, a single class, empty data.
        DictionaryError
            The dataset's token ids do not fit the model's vocabulary.
        """
        self._check_data(dataset, dataset_dir)
        y = check_labels(get_labels(dataset, labels))
        classes = sorted(set(y))
        self._build(classes)
        y_idx = torch.tensor([classes.index(v) for v in y], dtype=torch.long)
        counts = np.bincount(y_idx.numpy(), minlength=len(classes))
        val_score = None
        if eval_dataset is not None:
            self._check_data(eval_dataset)
            yv = check_labels(get_labels(eval_dataset, labels if eval_labels is None else eval_labels))

            def val_score():
                return classification_metrics(yv, self.predict_labels(eval_dataset), classes=classes).macro_f1

        seqs = dataset["input_ids"]
        self._train_loop(seqs, lambda idx, ids: y_idx[torch.as_tensor(idx)], _class_weights(self.config, classes, counts), val_score)
        ids = dataset["cell_id"] if "cell_id" in dataset.column_names else list(range(len(dataset)))
        self.train_info_ = {"cell_ids": [str(i) for i in ids], "labels": [str(v) for v in y]}
        return self

    def predict_proba(self, dataset) -> np.ndarray:
        """Class probabilities, shape (n_cells, n_classes), columns in ``classes_`` order."""
        seqs = dataset["input_ids"] if hasattr(dataset, "column_names") else list(dataset)
        out = np.zeros((len(seqs), len(self.classes_ or [])), dtype=np.float32)
        for idx, probs, _, _ in self._forward_probs(seqs):
            out[idx] = probs.cpu().numpy()
        return out

    def predict_labels(self, dataset) -> np.ndarray:
        """Predicted class per cell (array of strings)."""
        return np.asarray(self.classes_)[self.predict_proba(dataset).argmax(1)]

    def predict(self, dataset) -> pd.DataFrame:
        """Predictions table: ``cell_id``, ``predicted`` and ``p_<class>`` per class."""
        proba = self.predict_proba(dataset)
        ids = dataset["cell_id"] if "cell_id" in dataset.column_names else list(range(len(dataset)))
        df = pd.DataFrame(proba, columns=[f"p_{c}" for c in self.classes_])
        df.insert(0, "predicted", np.asarray(self.classes_)[proba.argmax(1)])
        df.insert(0, "cell_id", ids)
        return df

    def evaluate(self, dataset, labels: str | Sequence, adata, output_dir: str | Path | None = None,
                 train_adata=None):
        """Evaluate on held-out cells beside the PCA + logistic-regression baseline.

        Parameters
        ----------
        dataset, labels
            Held-out tokenized cells and their labels (column name or sequence).
        adata
            Raw counts holding the held-out cells (matched by ``cell_id``) and, unless
            ``train_adata`` is given, the training cells too: the baseline is fitted on the same
            training cells as the model (PCA on training cells only) and scored on the same test cells.
        output_dir
            If given, metrics tables, predictions, confusion matrices (and ROC for binary tasks)
            are written there.

        Returns
        -------
        netformer.classify.evaluate.Evaluation
        """
        from .evaluate import evaluate_cells

        return evaluate_cells(self, dataset, labels, adata, output_dir=output_dir, train_adata=train_adata)


# ------------------------------------------------------------------------------------------------
# Gene classification
# ------------------------------------------------------------------------------------------------
class GeneClassifier(_Finetuner):
    """Fine-tune a pretrained encoder to classify genes (token classification head).

    Every occurrence of a labelled gene in a cell is a training example (upstream Geneformer's
    gene classifier); tokens of unlabelled genes are ignored (-100). Predictions are per gene:
    the class probabilities averaged over all cells where the gene is among the top-ranked tokens.
    """

    kind = "gene"

    def _lookup(self, labels: dict[str, str], classes: list[str]) -> np.ndarray:
        lut = np.full(self.model.config.vocab_size, -100, dtype=np.int64)
        for g, c in labels.items():
            lut[self.vocab.token_dict[g]] = classes.index(c)
        return lut

    def _need_vocab(self) -> GeneVocab:
        if self.vocab is None:
            raise DictionaryError(f"{self.model_dir} holds no token dictionary and none was resolved from the cells; "
                                  "gene labels cannot be mapped to tokens. Fit on cells tokenized by netformer "
                                  "tokenize, or save the model with netformer.model.save_model(..., vocab=...)")
        return self.vocab

    def fit(self, dataset, gene_labels: Mapping[str, str], eval_gene_labels: Mapping[str, str] | None = None,
            on_missing: str = "drop", dataset_dir: str | Path | None = None) -> "GeneClassifier":
        """Fine-tune on the cells of ``dataset`` with labels for some genes.

        Parameters
        ----------
        gene_labels
            Gene id or symbol -> class (e.g. ``{"ENSG00000136997": "TF", ...}``). See
            :func:`resolve_gene_labels`.
        eval_gene_labels
            Validation genes (kept out of training); used for best-epoch selection.

        Raises
        ------
        GeneIdError
            No labelled gene is in the dictionary (or ``on_missing="raise"`` and some are not).
        InputDataError
            A single class, or no labelled gene occurs in the cells.
        """
        self._check_data(dataset, dataset_dir)
        vocab = self._need_vocab()
        labels = resolve_gene_labels(gene_labels, vocab, on_missing)
        seqs = dataset["input_ids"]
        present = self._present_tokens(seqs)
        labels = self._keep_present(labels, present, "training")
        check_labels(list(labels.values()), what="genes")
        classes = sorted(set(labels.values()))
        self._build(classes)
        lut = self._lookup(labels, classes)
        max_len = self._max_length()
        keep = [i for i, s in enumerate(seqs) if (lut[np.asarray(s[:max_len])] >= 0).any()]
        train_seqs = [seqs[i] for i in keep]
        flat = lut[np.concatenate([np.asarray(s[:max_len]) for s in train_seqs])]
        counts = np.bincount(flat[flat >= 0], minlength=len(classes))
        val_score = None
        if eval_gene_labels is not None:
            ev = self._keep_present(resolve_gene_labels(eval_gene_labels, vocab, on_missing), present, "validation")

            def val_score():
                pred = self.predict(dataset, genes=list(ev))
                return classification_metrics([ev[g] for g in pred.index], pred["predicted"], classes=classes).macro_f1

        lut_t = torch.from_numpy(lut)
        self._train_loop(train_seqs, lambda idx, ids: lut_t[ids], _class_weights(self.config, classes, counts),
                         val_score)
        self.train_info_ = {"gene_labels": labels, "n_cells": len(train_seqs)}
        return self

    def _present_tokens(self, seqs) -> set[int]:
        max_len = self.config.max_length or 10**9
        return set(np.unique(np.concatenate([np.asarray(s[:max_len]) for s in seqs])).tolist())

    def _keep_present(self, labels: dict[str, str], present: set[int], what: str) -> dict[str, str]:
        out = {g: c for g, c in labels.items() if self.vocab.token_dict[g] in present}
        if len(out) < len(labels):
            log.info("%d %s genes never occur in the cells' top-ranked tokens and are left out",
                     len(labels) - len(out), what)
        if not out:
            raise InputDataError(f"none of the {what} genes occurs in the tokenized cells")
        return out

    def predict(self, dataset, genes: Sequence[str] | None = None) -> pd.DataFrame:
        """Per-gene predictions, averaged over the cells in which each gene occurs.

        Returns a DataFrame indexed by gene id with ``n_cells`` (occurrences), ``predicted`` and
        ``p_<class>``; restricted to ``genes`` (vocabulary ids) when given, else every gene present.
        """
        vocab = self._need_vocab()
        seqs = dataset["input_ids"] if hasattr(dataset, "column_names") else list(dataset)
        k, V = len(self.classes_), self.model.config.vocab_size
        sums = torch.zeros((V, k), dtype=torch.float64)
        counts = torch.zeros(V, dtype=torch.float64)
        special = torch.tensor(vocab.special_ids)
        want = None
        if genes is not None:
            want = torch.zeros(V, dtype=torch.bool)
            want[[vocab.token_dict[g] for g in genes]] = True
        for _, probs, ids, mask in self._forward_probs(seqs):
            keep = mask.bool() & ~torch.isin(ids, special)
            if want is not None:
                keep &= want[ids]
            tok = ids[keep]
            sums.index_add_(0, tok, probs.cpu()[keep].double())
            counts.index_add_(0, tok, torch.ones(len(tok), dtype=torch.float64))
        present = torch.nonzero(counts > 0).flatten()
        p = (sums[present] / counts[present, None]).numpy()
        df = pd.DataFrame(p, columns=[f"p_{c}" for c in self.classes_],
                          index=pd.Index([vocab.token_to_gene(int(t)) for t in present], name="gene"))
        df.insert(0, "predicted", np.asarray(self.classes_)[p.argmax(1)] if len(p) else [])
        df.insert(0, "n_cells", counts[present].numpy().astype(int))
        return df

    def evaluate(self, dataset, gene_labels: Mapping[str, str], adata, output_dir: str | Path | None = None,
                 on_missing: str = "drop"):
        """Evaluate on held-out genes beside the gene-statistics baseline (logistic regression on
        mean, fraction expressing and variance of each gene over the cells of ``adata``, fitted on
        this classifier's training genes). Returns an :class:`~netformer.classify.evaluate.Evaluation`."""
        from .evaluate import evaluate_genes

        return evaluate_genes(self, dataset, gene_labels, adata, output_dir=output_dir, on_missing=on_missing)
