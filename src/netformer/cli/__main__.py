"""``python -m netformer.cli ...``: the same command line as ``python -m netformer``."""

from netformer.cli import main

if __name__ == "__main__":
    main()
