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
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="ICG_API_KEY",
            help="Key clients send as 'Authorization: Bearer KEY' on /v1/...; required off loopback.",
        ),
    ] = None,
    public_url: Annotated[
        str | None,
        typer.Option(
            help="Base of returned URLs, e.g. https://covers.example.com (default: http://HOST:PORT)."
        ),
    ] = None,
    rate_limit: Annotated[
        float, typer.Option(help="Requests/s per client (token bucket; 0 = off); more get 429.", min=0)
    ] = 10.0,
    rate_burst: Annotated[int, typer.Option(help="Requests a client may send at once.", min=1)] = 30,
    max_decodes: Annotated[
        int, typer.Option(help="Uploads read and decoded at once; more wait briefly, then get 503.", min=1)
    ] = 2,
    cache_mb: Annotated[
        int, typer.Option(help="Cover cache bound, MiB (least recently used covers are deleted).", min=1)
    ] = 1024,
) -> None:
    """Serve personalized covers: POST /v1/covers, GET /v1/covers/{id}, /healthz, /docs, the gallery at /."""
    import torch
    import uvicorn

    from icg.data.registry import load_dataset
    from icg.errors import ICGError
    from icg.presets import get_preset
    from icg.serve.app import create_app

    where, torch_dtype = device_and_dtype(device, dtype)
    if not is_loopback(host) and not api_key:
        raise ICGError(
            f"--host {host} is reachable from other machines: give --api-key (or set ICG_API_KEY), "
            "which clients then send as 'Authorization: Bearer KEY'"
        )
    if api_key is not None and len(api_key) < 8:
        raise ICGError("--api-key must be at least 8 characters")
    shown = f"[{host}]" if ":" in host else host
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
        api_key=api_key,
        base_url=public_url or f"http://{shown}:{port}",
        rate_limit=rate_limit or None,
        rate_burst=rate_burst,
        max_decodes=max_decodes,
        max_cache_bytes=cache_mb * 1024 * 1024,
    )
    if not is_loopback(host):
        logger.warning("binding %s: the cover API is reachable from other machines (API key required)", host)
    typer.echo(
        f"ICG cover API: http://{shown}:{port}/  (docs: /docs; preset {app.state.spec.name}; Ctrl-C stops)"
    )
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1)
