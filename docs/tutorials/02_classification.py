"""Tutorial 2: fine-tune a cell classifier (Kang 2018 ctrl vs interferon-stimulated), cross-validated
beside its baseline.

    python docs/tutorials/02_classification.py --model netformer_demo/cells/pretrain/model

Every fold fine-tunes the encoder with a classification head and scores it on the held-out cells beside
logistic regression on 50 PCs of log-normalised counts (PCA fitted on the training cells only). CLI:
``netformer finetune cell cells.h5ad MODEL --label-column condition --out clf/``.
"""

from _common import arguments

from netformer.classify import FinetuneConfig, cross_validate_cells
from netformer.classify.data import load_cells
from netformer.datasets import shared_data_dir
from netformer.genes import model_vocab

args = arguments(__doc__, cells=600)
kang = shared_data_dir() / "scrna" / "kang2018_ifnb_ctrl_stim_2000cells_raw.h5ad"
cells = load_cells(kang, model_vocab(args.model), max_length=256, obs_columns=["condition"], n_cells=args.cells)
cv = cross_validate_cells(args.model, cells, "condition", n_splits=2, config=FinetuneConfig(epochs=args.epochs))
print(cv.summary().round(3))                            # model_* beside baseline_* (mean, std over folds)
cv.save(args.out / "kang_cv")                            # pooled predictions, ROC, confusion matrices
