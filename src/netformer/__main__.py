"""``python -m netformer ...`` (also ``torchrun -m netformer ...``, ``accelerate launch -m netformer ...``)."""

from netformer.cli import main

if __name__ == "__main__":
    main()
