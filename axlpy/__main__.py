"""``python -m axlpy``: the same command line as the ``axlpy`` console script."""

from .cli import main

if __name__ == "__main__":
    main()
