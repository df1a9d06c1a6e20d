"""`python -m mlops`: the same as the `mlops` command."""

from mlops.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
