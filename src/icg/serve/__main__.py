"""`python -m icg.serve …`: the same command as `icg serve` (used by bench/serve_load.py)."""

import typer

from icg.serve.cli import serve

if __name__ == "__main__":
    typer.run(serve)
