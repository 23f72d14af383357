"""Shared command-line arguments of the tutorials (each tutorial is a script: python docs/tutorials/NAME.py)."""

import argparse
from pathlib import Path


def arguments(doc: str, cells: int) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="netformer_demo/cells/pretrain/model",
                   help="a pretrained model directory (default: the demo's; or a Geneformer checkpoint)")
    p.add_argument("--cells", type=int, default=cells, help="how many cells to use")
    p.add_argument("--out", type=Path, default=Path("tutorial_out"), help="where figures and tables go")
    p.add_argument("--epochs", type=int, default=2, help="fine-tuning epochs (tutorials 2-4)")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    return args
