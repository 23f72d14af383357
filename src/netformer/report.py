"""The demo's self-contained HTML report (jinja2 template ``netformer/templates/report.html.j2``).

One section per step with its key figures beside the baseline, the figures embedded as PNG data URIs
at their full size, links to every output file (relative to the demo folder), per-step timings,
provenance (package version, git commit when the package runs from a clone, date, Python / torch /
transformers versions, device, precision, CPU capability, seeds) and a closing "your own data"
section with the commands.
"""

from __future__ import annotations

import base64
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from ._io import atomic_file

TITLES = {"cells": "Cells: rank value encoding, pretraining, cell embeddings",
          "states": "States: a fine-tuned classifier and in silico treatment",
          "genes": "Genes: gene embeddings and the model's gene network",
          "experiments": "Experiments: which perturbations to measure"}

OWN_DATA = """\
# 1. cells: build a dictionary, tokenize, pretrain (or use a published checkpoint), embed
netformer tokenize my_cells.h5ad --build-vocab --input-size 256 --obs-column cell_type --out tok/
netformer pretrain tok/ --preset small --out run/
netformer embed run/model tok/ --out cell_embeddings.parquet

# 2. states: fine-tune a classifier of your two states, then treat in silico toward the goal state
netformer finetune cell my_cells.h5ad run/model --label-column condition --out clf/
netformer perturb clf/model tok/ --state-column condition --start disease --goal healthy --out isp/

# 3. genes: a paper gene task with your cells, and the model's gene network
netformer finetune gene my_cells.h5ad run/model --task dosage-sensitivity --out dosage/
netformer network attention run/model tok/ --out network/

# 4. experiments: choose perturbations in one shot, and benchmark against random on your screen
netformer select run --budget 100 --out selection/
netformer select benchmark --data my_perturbseq.h5ad --out bench/"""


def _git_commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        r = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                           timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return r.stdout.strip() or None if r.returncode == 0 else None


def provenance(config) -> dict:
    """Version, commit, date, library versions, machine and seeds of a run."""
    import numpy
    import torch
    import transformers

    from . import __version__
    from .encoder import default_device
    from .precision import describe_hardware

    dev = default_device(config.device)
    hw = describe_hardware(dev)
    return {"version": __version__, "commit": _git_commit() or "not a git checkout",
            "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "numpy": numpy.__version__, "device": hw["device"], "precision": "fp32 (float32 weights and activations)",
            "cpu": hw["cpu"], "cpu capability": hw["cpu_capability"], "native bf16": hw["bf16_unit"] or "none",
            "threads": torch.get_num_threads(), "seed": config.seed}


def _figure(root: Path, rel: str, caption: str) -> dict | None:
    p = root / rel
    if not p.exists():
        return None
    return {"data": "data:image/png;base64," + base64.b64encode(p.read_bytes()).decode(), "caption": caption,
            "path": rel}


def _cells(m: dict, root: Path) -> dict:
    counts = ", ".join(f"{k} {v}" for k, v in m["cell_type_counts"].items())
    return {
        "intro": f"Raw UMI counts of {m['n_cells']:,} pbmc3k cells (10x Genomics, CC BY 4.0, bundled) became rank value "
                 f"encodings over a dictionary of {m['n_genes_in_vocab']:,} genes; a {m['preset']} BERT encoder "
                 f"({m['n_parameters']:,} parameters) was pretrained on them by masked gene prediction, and cell "
                 f"embeddings (mean of the second to last layer over gene tokens) were scored by {m['knn_k']}-NN "
                 f"accuracy of marker-based cell types ({counts}), beside 50 PCs of log-normalised counts. The PCA "
                 "baseline has a head start: the cell types were made by clustering those components. A model "
                 "pretrained for minutes on 2,700 cells is not expected to beat it.",
        "headline": f"{m['knn_k']}-NN accuracy {m['knn_accuracy_netformer']:.3f}",
        "baseline": f"PCA {m['knn_accuracy_pca_baseline']:.3f}; majority class {m['majority_class_rate']:.3f}",
        "tables": [{"title": "Key figures", "columns": ["measure", "value"], "rows": [
            {"measure": "cells / genes in file / genes in dictionary",
             "value": f"{m['n_cells']:,} / {m['n_genes_in_file']:,} / {m['n_genes_in_vocab']:,}"},
            {"measure": "mean tokens per cell (input size)", "value": f"{m['mean_tokens_per_cell']} ({m['max_length']})"},
            {"measure": "fraction of counts on dictionary genes", "value": m["mapped_count_fraction"]},
            {"measure": "pretraining", "value": f"{m['epochs']:g} epochs, {m['steps']} steps"},
            {"measure": "masked gene loss first / last (uniform guess)",
             "value": f"{m['loss_first']} / {m['loss_last']} ({m['uniform_loss']})"},
            {"measure": f"{m['knn_k']}-NN accuracy: netformer / 50 PCs / majority class",
             "value": f"{m['knn_accuracy_netformer']} / {m['knn_accuracy_pca_baseline']} / {m['majority_class_rate']}"},
            {"measure": "device", "value": m["device"]}]}],
        "figures": [_figure(root, "cells/umap_cell_type.png", "UMAP of the netformer cell embeddings"),
                    _figure(root, "cells/umap_pca_baseline.png", "baseline: UMAP of 50 PCs"),
                    _figure(root, "cells/training_loss.png", "masked gene prediction loss; dashed: a uniform guess")],
    }


def _states(m: dict, root: Path) -> dict:
    rows = [{"rank": i + 1, "gene": r["symbol"], "cells": r["n_cells"], "mean shift toward ctrl": f"{r['mean_shift']:.4f}",
             "FDR": f"{r['fdr']:.2g}", "known ISG": "yes" if r["known_isg"] else "",
             "_class": "isg" if r["known_isg"] else ""} for i, r in enumerate(m["top20_significant"])]
    return {
        "intro": f"A ctrl/stim classifier was fine-tuned from the cells step's encoder on {m['n_train']:,} Kang 2018 "
                 f"PBMCs (interferon-beta stimulated or control) and scored on {m['n_test']} held-out cells beside "
                 f"the PCA baseline. Then every expressed gene was deleted in silico, one at a time, in "
                 f"{m['treated_cells']} stimulated cells ({m['perturbations']:,} perturbations), and the shift of "
                 "each cell toward the control state was measured (upstream Geneformer's in silico treatment). "
                 f"{m['genes_tested']:,} genes deleted in enough cells were tested; {m['significant_toward_goal']} "
                 "shift cells significantly toward control (FDR < 0.05). Known interferon-stimulated genes (a list "
                 "fixed in the package, Schoggins et al. 2011 and Kang et al. 2018) are marked; they are not used "
                 "in the ranking.",
        "headline": f"{m['known_isgs_in_top20_significant']} of the top 20 significant genes are known ISGs; "
                    f"classifier macro-F1 {m['classifier_macro_f1']:.3f}",
        "baseline": f"PCA classifier macro-F1 {m['baseline_macro_f1']:.3f}",
        "tables": [{"title": "Top 20 significant genes toward control (highlighted: known interferon-stimulated genes)",
                    "columns": ["rank", "gene", "cells", "mean shift toward ctrl", "FDR", "known ISG"], "rows": rows,
                    "note": "FDR: Benjamini-Hochberg over the Mann-Whitney tests of each gene's shifts against all "
                            "perturbations of the run."},
                   {"title": "Classifier on held-out cells", "columns": ["model", "macro-F1", "ROC-AUC"], "rows": [
                       {"model": "fine-tuned netformer", "macro-F1": m["classifier_macro_f1"], "ROC-AUC": m["classifier_auc"]},
                       {"model": "PCA + logistic regression", "macro-F1": m["baseline_macro_f1"], "ROC-AUC": m["baseline_auc"]}]}],
        "figures": [_figure(root, "states/ranked_shifts.png", "genes ranked by mean shift toward control"),
                    _figure(root, "states/top_genes.png", "shift distributions of the top genes")],
    }


def _genes(m: dict, root: Path) -> dict:
    go = m.get("go") or {}
    rows = [{"network": "attention (model)", "AUPRC": _f(go.get("auprc"))},
            {"network": "co-expression (baseline)", "AUPRC": _f(go.get("baseline_auprc"))},
            {"network": "shuffled scores", "AUPRC": _f(go.get("auprc_shuffled"))},
            {"network": "base rate (GO edges among the pairs)", "AUPRC": _f(go.get("base_rate"))}]
    near = [{"marker": k, "nearest genes (cosine of gene embeddings)": ", ".join(v)}
            for k, v in m["marker_neighbours"].items()]
    return {
        "intro": f"Gene embeddings (each gene's contextual hidden state averaged over {m['n_cells']} pbmc3k cells) "
                 f"and the model's attention gene network of the same cells ({m['network_genes']:,} genes, "
                 f"{m['network_edges']:,} edges: the last layer's attention, all heads, row-normalised, top 20 "
                 "targets per gene). The network is scored against GO (pairs of genes whose GO term sets have "
                 "Jaccard > 0.1) beside the co-expression network of the same cells and genes.",
        "headline": f"GO AUPRC {_f(go.get('auprc'))}" if go.get("auprc") is not None else "GO score not computed",
        "baseline": f"co-expression {_f(go.get('baseline_auprc'))}, shuffled {_f(go.get('auprc_shuffled'))}",
        "tables": [{"title": "Gene network against GO (all scored pairs with both genes in GO)",
                    "columns": ["network", "AUPRC"], "rows": rows,
                    "note": "A network that does not beat co-expression is reported as such (docs/network.md)."},
                   {"title": "Nearest genes of marker genes", "columns": ["marker", "nearest genes (cosine of gene "
                                                                                    "embeddings)"], "rows": near}],
        "figures": [_figure(root, "genes/network/network.png", "top subnetwork of the attention network (by PageRank)")],
    }


def _experiments(m: dict, root: Path) -> dict:
    rows = [{"method": r["method"], "budget": r["budget"], "mse_top20_de": r["mse_top20_de"],
             "95% interval": f"{r['ci'][0]} - {r['ci'][1]}", "p vs random": r.get("p_vs_random", ""),
             "verdict": r.get("verdict_vs_random", "reference")} for r in m["panel"]]
    return {
        "intro": f"GraphReach chose {m['budget']} perturbations from the {m['graph_genes']:,} genes of the GO graph "
                 "in one shot (lazy greedy coverage of the graph's propagation operator); its coverage is drawn "
                 "beside a random choice. The panel trains the ridge outcome model on the perturbations each "
                 f"method picks among the real Norman 2019 K562 singles ({m['panel_setting']}) and scores it on "
                 f"the held-out ones, over {m['panel_seeds']} seeds. The pool is tiny: this shows the workflow, "
                 "not a verdict (docs/select.md holds the benchmark that can tell methods apart).",
        "headline": f"GraphReach covers {100 * m['coverage_graphreach']:.1f}% of the graph with {m['budget']}",
        "baseline": f"random {100 * m['coverage_random']:.1f}%",
        "tables": [{"title": "Norman 2019 panel: error on held-out perturbations (lower is better)",
                    "columns": ["method", "budget", "mse_top20_de", "95% interval", "p vs random", "verdict"],
                    "rows": rows, "note": "p: paired Wilcoxon signed-rank test across seeds; verdict at BH q < 0.05."}],
        "figures": [_figure(root, "experiments/coverage.png", "graph coverage against budget"),
                    _figure(root, "experiments/norman_panel.png", "Norman 2019 panel: mse_top20_de against budget")],
    }


def _setting(name: str, value, device: str) -> str:
    """A setting as a person reads it (no ``None``: the default it stands for)."""
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value))
    if value is None:
        return f"automatic ({device})" if name == "device" else "all"
    return str(value)


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


SECTIONS = {"cells": _cells, "states": _states, "genes": _genes, "experiments": _experiments}


def write_report(out: Path, records: dict, config) -> Path:
    """Write ``out/report.html`` from the demo's step records (:class:`netformer._demo.StepRecord`) and its
    PNG files; returns its path."""
    import jinja2

    out = Path(out)
    steps = []
    for name, rec in records.items():
        s = {"name": name, "title": TITLES[name], "status": rec.status, "seconds": rec.seconds,
             "message": rec.message, "files": rec.files, "headline": "", "baseline": "", "tables": [], "figures": []}
        if rec.status in ("done", "reused") and rec.metrics:
            s.update(SECTIONS[name](rec.metrics, out))
            s["figures"] = [f for f in s["figures"] if f is not None]
        steps.append(s)
    env = jinja2.Environment(loader=jinja2.PackageLoader("netformer", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]))
    prov = provenance(config)
    shown = {k: _setting(k, v, prov["device"]) for k, v in config.to_dict().items()}
    page = env.get_template("report.html.j2").render(
        steps=steps, prov=prov, config=shown, own_data=OWN_DATA,
        total_seconds=sum(r.seconds for r in records.values() if r.status == "done"))
    path = out / "report.html"
    with atomic_file(path) as tmp:
        tmp.write_text(page)
    return path
