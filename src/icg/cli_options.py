"""What every `icg` sub-command module shares: option types, dataset loading, JSON output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

DatasetArg = Annotated[
    str, typer.Argument(help="ml-100k, ml-1m, ml-20m, ml-25m, ml-latest, ml-latest-small, pixelrec or logs.")
]

PathOpt = Annotated[
    Path | None, typer.Option("--path", help="Folder holding the dataset's files (ml-100k: optional).")
]

SignalOpt = Annotated[
    str | None,
    typer.Option("--signal", help="PixelRec: engagement column used as relevance (view_number, …)."),
]

ClipOpt = Annotated[
    str | None,
    typer.Option(help="CLIP folder (`icg train clip`) or 'random'; default: the mini preset's, if present."),
]

ThreadsOpt = Annotated[
    int | None, typer.Option(help="torch CPU threads; small ops on a busy 2-core machine run fastest on 1.")
]

# The trainers' resume and time-budget options (each trainer saves out/checkpoint.pt after every epoch).
ResumeOpt = Annotated[bool, typer.Option(help="Continue from out/checkpoint.pt when present.")]

MinutesOpt = Annotated[
    float | None, typer.Option(help="Time budget: stop between epochs once spent (resumable).")
]

MiniRecipeOpt = Annotated[str, typer.Option(help="Model size and recipe (only 'mini' for now).")]
TrainingRecipeOpt = Annotated[str, typer.Option(help="A recipe of icg/training/recipes, or a .json file.")]


def load_data(dataset: str, path: Path | None, signal: str | None = None):
    """A dataset by name; imported lazily so that `icg --help` stays fast."""
    from icg.data.registry import load_dataset

    options = {"signal": signal} if signal else {}
    return load_dataset(dataset, path, **options)


def print_json(payload: object) -> None:
    """Machine-readable results on stdout (logs and progress go to stderr)."""
    sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")


DeviceOpt = Annotated[
    str, typer.Option(help="auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N.")
]

DtypeOpt = Annotated[
    str, typer.Option(help="auto (bfloat16 on a GPU, float32 on the CPU), float32, float16 or bfloat16.")
]


def device_and_dtype(device: str, dtype: str):
    """(torch.device, torch.dtype) from the --device/--dtype options; a bad value is one clear error."""
    from icg.errors import ICGError
    from icg.modules import resolve_device, resolve_dtype

    try:
        where = resolve_device(device)
        if where.type == "cuda":
            import torch

            if not torch.cuda.is_available():
                raise ValueError(f"--device {device}: no CUDA device is available here")
        return where, resolve_dtype(dtype, where)
    except ValueError as err:
        raise ICGError(str(err)) from err


SpeedOpt = Annotated[
    bool | None,
    typer.Option(
        "--speed/--no-speed",
        help="torch.compile, channels-last, fused self-attention Q/K/V (icg.speed); default: on a GPU only.",
    ),
]


def speed_options(device, speed: bool | None):
    """The `icg.speed.SpeedOptions` of --speed/--no-speed on `device` (None: the device's default)."""
    from icg.speed import SpeedOptions, default_speed_options

    if speed is None:
        return default_speed_options(device)
    return SpeedOptions() if speed else None
