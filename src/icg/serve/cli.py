"""`icg serve`: load one preset, then serve the cover API and the gallery with uvicorn (loopback by default).

Registered in `icg.cli` with `app.command("serve")(serve)`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from icg.cli_options import DeviceOpt, DtypeOpt, SpeedOpt, device_and_dtype, speed_options
from icg.loopback import is_loopback

logger = logging.getLogger(__name__)


def serve(
    preset: Annotated[
        str, typer.Option(help="mini (embedded default), sd15, flux, tiny, tiny-flux or a preset folder.")
    ] = "mini",
    dataset: Annotated[
        str, typer.Option(help="Dataset for item ids, search and the gallery ('none' for uploads only).")
    ] = "ml-100k",
    host: Annotated[
        str, typer.Option(help="Address to bind; loopback unless clients are remote.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.", min=1, max=65535)] = 8000,
    cache_dir: Annotated[
        Path | None, typer.Option(help="Served covers and item contexts (default: $ICG_HOME/serve-cache).")
    ] = None,
    max_queue: Annotated[
        int, typer.Option(help="Generation jobs allowed to wait; more get 503.", min=1)
    ] = 32,
    max_upload_kb: Annotated[int, typer.Option(help="Largest reference image upload, KiB.", min=1)] = 4096,
    max_steps: Annotated[int, typer.Option(help="Largest `steps` a request may ask for.", min=1)] = 50,
    threads: Annotated[
        int | None, typer.Option(help="torch threads for generation (default: torch's).")
    ] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level.")] = "warning",
    device: DeviceOpt = "auto",
    dtype: DtypeOpt = "auto",
    speed: SpeedOpt = None,
) -> None:
    """Serve personalized covers: POST /v1/covers, GET /v1/covers/{id}, /healthz, /docs, the gallery at /."""
    import torch
    import uvicorn

    from icg.data.registry import load_dataset
    from icg.presets import get_preset
    from icg.serve.app import create_app

    where, torch_dtype = device_and_dtype(device, dtype)
    if threads is not None:
        torch.set_num_threads(threads)
    data = None if dataset.lower() == "none" else load_dataset(dataset)
    app = create_app(
        get_preset(preset),
        dataset=data,
        cache_dir=cache_dir,
        max_queue=max_queue,
        max_upload_bytes=max_upload_kb * 1024,
        max_steps=max_steps,
        device=where,
        torch_dtype=torch_dtype,
        speed=speed_options(where, speed),
    )
    if not is_loopback(host):
        logger.warning("binding %s: the cover API is reachable from other machines (no authentication)", host)
    shown = f"[{host}]" if ":" in host else host
    typer.echo(
        f"ICG cover API: http://{shown}:{port}/  (docs: /docs; preset {app.state.spec.name}; Ctrl-C stops)"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
