"""`icg batch`: the typer command (registered by icg.cli) and `python -m icg.batch.cli` for the same."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from icg.cli_options import SpeedOpt
from icg.errors import ICGError


def batch(
    out: Annotated[Path, typer.Option("--out", help="Folder for covers/, segments/, manifest.parquet.")],
    items: Annotated[
        str, typer.Option(help="Dataset name, or a .parquet/.csv table with title, image_path [, item_id].")
    ] = "ml-100k",
    users: Annotated[
        str | None,
        typer.Option(help="Dataset name or a table with user_id [, profile] (default: the items' dataset)."),
    ] = None,
    dataset_path: Annotated[
        Path | None, typer.Option(help="Folder of a dataset that needs one (ml-1m, …).")
    ] = None,
    preset: Annotated[
        str, typer.Option(help="mini (embedded default), sd15, flux, tiny, tiny-flux or a preset folder.")
    ] = "mini",
    segments: Annotated[int, typer.Option(help="K: user segments (k-means over user embeddings).")] = 8,
    seed: Annotated[int, typer.Option(help="Seed of k-means and of every cover's noise.")] = 0,
    steps: Annotated[int | None, typer.Option(help="DDIM steps (default: the preset's).")] = None,
    guidance: Annotated[float | None, typer.Option(help="Guidance scale (default: the preset's).")] = None,
    adapter_scale: Annotated[float | None, typer.Option(help="Weight of the personalized path.")] = None,
    user_scale: Annotated[
        float, typer.Option(help="Personalization strength: 0 = context only, 1 = as trained, >1 stronger.")
    ] = 1.0,
    image_format: Annotated[str, typer.Option("--format", help="png or webp.")] = "png",
    max_items: Annotated[int | None, typer.Option(help="Only the first N items.")] = None,
    max_users: Annotated[int | None, typer.Option(help="Only the first N users.")] = None,
    executor: Annotated[str, typer.Option(help="ray (default) or local (same stages, no Ray).")] = "ray",
    address: Annotated[
        str | None, typer.Option(help="Ray cluster address (ray.init(address=...)); default: a local Ray.")
    ] = None,
    context_workers: Annotated[int, typer.Option(help="Actors of the item-context (MLLM) stage.")] = 1,
    generation_workers: Annotated[int, typer.Option(help="Actors of the generation stage.")] = 1,
    context_batch_size: Annotated[int, typer.Option(help="Items per context batch.")] = 8,
    generation_batch_size: Annotated[int, typer.Option(help="Covers per generation batch.")] = 4,
    threads: Annotated[int | None, typer.Option(help="torch threads per worker.")] = 1,
    gpus_per_worker: Annotated[
        float | None, typer.Option(help="GPUs per generation actor (default: 0.5 if the cluster has GPUs).")
    ] = None,
    context_gpus_per_worker: Annotated[
        float | None, typer.Option(help="GPUs per context actor (default: 0.5 if the cluster has GPUs).")
    ] = None,
    dtype: Annotated[str, typer.Option(help="float32, float16 or bfloat16.")] = "float32",
    quiet: Annotated[bool, typer.Option(help="No progress bars.")] = False,
    speed: SpeedOpt = None,
) -> None:
    """Covers for items × user segments (k-means over user embeddings) on Ray Data; rerun to resume."""
    from icg.batch.job import BatchConfig, run_batch
    from icg.validation import check_out_dir, check_seed, check_steps

    check_out_dir(out)  # a file, a path under a file or a read-only folder is refused before any work
    check_seed(seed)
    check_steps(steps)
    config = BatchConfig(
        out=str(out), items=items, users=users, dataset_path=str(dataset_path) if dataset_path else None,
        preset=preset, segments=segments, seed=seed, num_inference_steps=steps, guidance_scale=guidance,
        adapter_scale=adapter_scale, user_scale=user_scale, image_format=image_format, max_items=max_items,
        max_users=max_users,
        executor=executor, address=address, context_workers=context_workers,
        generation_workers=generation_workers, context_batch_size=context_batch_size,
        generation_batch_size=generation_batch_size, threads=threads, gpus_per_worker=gpus_per_worker,
        context_gpus_per_worker=context_gpus_per_worker, torch_dtype=dtype, speed=speed, progress=not quiet,
    )  # fmt: skip
    result = run_batch(config)
    typer.echo(
        f"{result.generated} covers generated, {result.skipped} already complete "
        f"({result.items} items × {result.segments} segments) in {result.seconds:.1f} s → {result.manifest}"
    )


def main() -> None:
    """`python -m icg.batch.cli`: the command alone (errors as one line, exit code 2, like `icg`)."""
    import sys

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = typer.Typer(add_completion=False)
    app.command()(batch)
    try:
        app(standalone_mode=False)
    except ICGError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except Exception as exc:  # disk full, read-only, a file where a folder goes (maybe inside a Ray worker)
        from icg.validation import os_error_line, user_error_in_chain

        cause = user_error_in_chain(exc)
        if cause is None:
            raise
        typer.echo(f"error: {os_error_line(cause) if isinstance(cause, OSError) else cause}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
