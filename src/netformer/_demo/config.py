"""Settings of the demo: one dataclass that round-trips to JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Sequence

from ..errors import ConfigError

#: The demo's steps, in order: cells -> states -> genes -> experiments.
STEPS = ("cells", "states", "genes", "experiments")


@dataclass
class DemoConfig:
    """Settings of ``netformer demo`` (defaults finish in about 12 minutes on a 2-core CPU).

    Attributes
    ----------
    steps
        The steps to run (:data:`STEPS`); a step needs the model of ``cells`` (run before, or now).
    preset, max_length, epochs, batch_size, learning_rate, warmup_steps
        Pretraining of the cells step: model preset (``small``: 4 layers, hidden 128), input size
        (each cell's top ``max_length - 2`` genes between ``<cls>`` and ``<eos>``), schedule.
    knn_k
        Neighbours of the k-nearest-neighbour accuracy of the cell embeddings.
    max_cells
        Cells step: a random subset of this many pbmc3k cells (seeded) after annotation; None = all 2,700.
    finetune_epochs, finetune_cells
        States step: epochs of the ctrl/stim classifier on Kang 2018, and how many of its 2,000 cells
        (None: all); 80% train, 20% held out for the score beside the PCA baseline.
    treat_cells
        States step: stimulated cells in which every expressed gene is deleted in silico (shift toward ctrl).
    min_cells_stats
        States step: genes deleted in fewer cells get no test (upstream's statistics need several cells).
    network_cells
        Genes step: pbmc3k cells of the attention gene network.
    budget
        Experiments step: perturbations chosen by GraphReach on the GO graph.
    panel_seeds
        Experiments step: seeds of the Norman 2019 panel (test split and random draws).
    seed, device
        Global seed; device (None: CUDA when available, else CPU).
    """

    steps: Sequence[str] = STEPS
    preset: str = "small"
    max_length: int = 256
    epochs: float = 3.0
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    knn_k: int = 10
    max_cells: int | None = None
    finetune_epochs: int = 2
    finetune_cells: int | None = None
    treat_cells: int = 60
    min_cells_stats: int = 5
    network_cells: int = 300
    budget: int = 100
    panel_seeds: int = 10
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        steps = [self.steps] if isinstance(self.steps, str) else list(self.steps)
        bad = [s for s in steps if s not in STEPS]
        if bad or not steps:
            raise ConfigError(f"unknown demo steps {bad or steps}; choose from {', '.join(STEPS)} (e.g. --steps "
                              "cells,states)")
        self.steps = tuple(s for s in STEPS if s in steps)  # always in pipeline order

    def to_dict(self) -> dict:
        d = asdict(self)
        d["steps"] = list(self.steps)
        return d

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, d: dict) -> "DemoConfig":
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown demo settings {unknown}")
        return cls(**d)

    def step_settings(self, step: str) -> dict:
        """The settings a step's result depends on (a finished step is reused only when they match)."""
        common = {"seed": self.seed}
        cells = {k: getattr(self, k) for k in ("preset", "max_length", "epochs", "batch_size", "learning_rate",
                                                "warmup_steps", "knn_k", "max_cells")}
        own = {"cells": cells,
               "states": {"finetune_epochs": self.finetune_epochs, "finetune_cells": self.finetune_cells,
                          "treat_cells": self.treat_cells, "min_cells_stats": self.min_cells_stats},
               "genes": {"network_cells": self.network_cells},
               "experiments": {"budget": self.budget, "panel_seeds": self.panel_seeds}}[step]
        # every later step builds on the cells step's model
        return {**common, **own, **({"model": cells} if step != "cells" and step != "experiments" else {})}
