"""The cover API (FastAPI): personalized covers on request, cached on disk, one model behind a bounded queue.

Routes (all documented at /docs and /openapi.json):
- `POST /v1/covers` (multipart or urlencoded form): an item (`item_id` of the loaded dataset, or `title` +
  uploaded `image`), a user (`user_id`, `profile` or both), optional `seed` and `steps`; answers the PNG, or
  JSON with the cover's URL when `format=json`.
- `GET /v1/covers/{id}` (PNG) and `GET /v1/covers/{id}/metadata` (JSON): ids are 64 hex digits found in the
  cache index; anything else, `../` included, is 404 and never becomes a path.
- `GET /v1/items?q=`, `GET /v1/items/{item_id}`, `GET /v1/items/{item_id}/reference`, `GET /v1/users?q=`:
  the loaded dataset, for the gallery at `GET /`.
- `GET /healthz`: preset, adapter hash, queue depth, cache size.

Admission before work (`icg.serve.admission`), in this order, before any body is read: a per-client token
bucket (429 + `Retry-After`), the API key when one is configured (401; required by `icg serve` on any
non-loopback address), and one of `max_decodes` decode slots (503). Then bodies over `max_upload_bytes` (+ a
little for the form fields) are refused with 413 before they are parsed; a full queue is answered 503 before
an upload is decoded, and an upload over `max_image_pixels` (sized from what the model's image processor
keeps) is refused from its header, before its pixels are decoded.

Generation never runs on the event loop: the loop validates, checks the cache, and hands a job to the single
worker thread (`icg.serve.worker`); when `max_queue` jobs already wait the answer is 503 with `Retry-After`.
Returned URLs start with the configured `base_url` (relative when none), never with the request's `Host`.
422 bodies name the field and never echo a long input back.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from icg.cover_record import RunInfo, cover_record
from icg.data.records import InteractionData
from icg.loading import load_cover_pipeline
from icg.pipeline import CoverItem, CoverUser
from icg.presets import PresetSpec, get_preset, icg_home
from icg.rating.app import BodyLimitMiddleware
from icg.serve.admission import AdmissionMiddleware, DecodeSlots, TokenBuckets
from icg.serve.cache import BoundedContextCache, CoverCache, cover_key, is_cover_id
from icg.serve.catalog import Catalog
from icg.serve.gallery import GALLERY_CSP, GALLERY_HTML
from icg.serve.inputs import (
    ResolvedUser,
    decode_image,
    field_error,
    input_error,
    resolve_user,
    upload_item_key,
    upload_pixel_cap,
)
from icg.serve.openapi import PNG, cover_form_schema, documented, validation_error
from icg.serve.worker import GenerationWorker, QueueFullError, WorkerClosedError
from icg.speed import SpeedOptions, apply_speed_options
from icg.validation import (
    MAX_PROFILE_CHARS,
    MAX_SEED,
    MAX_TITLE_CHARS,
    MAX_USER_SCALE,
    InputError,
    check_seed,
    check_steps,
    check_title,
    check_user_scale,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_QUEUE = 32
DEFAULT_MAX_UPLOAD_BYTES = 4 * 1024 * 1024
DEFAULT_MAX_DECODES = 2  # uploads read and decoded at once (each at most max_image_pixels)
DEFAULT_RATE_LIMIT = 10.0  # requests/s per client, with bursts of DEFAULT_RATE_BURST
DEFAULT_RATE_BURST = 30
DEFAULT_CACHE_BYTES = 1024 * 1024 * 1024
FORM_OVERHEAD_BYTES = 64 * 1024  # multipart boundaries and the small text fields beside the image
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*[^\x00-\x1f\x7f\s][^\x00-\x1f\x7f]*$"  # printable, not blank
COVER_CACHE_CONTROL = "public, max-age=31536000, immutable"  # a cover id names its exact pixels
SERVER_ONLY = ("model_ids",)  # in the cache entry, never answered: model folders are the server's paths
SearchQuery = Annotated[str, Query(max_length=100)]  # the gallery's search box
_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


def _not_found(what: str) -> HTTPException:
    return HTTPException(status_code=404, detail=f"{what} not found")


def _unavailable(detail: str, retry_after: int) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=503, headers={"retry-after": str(retry_after)})


def _png_response(data: bytes, headers: dict[str, str]) -> Response:
    return Response(data, media_type="image/png", headers=headers)


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _personalized(pipe: Any) -> Any:
    """The pipeline's user encoder when covers can be personalized (encoder + projector user path)."""
    encoder = getattr(pipe, "user_encoder", None)
    config = getattr(getattr(pipe, "projector", None), "config", None)
    return encoder if encoder is not None and getattr(config, "has_user_path", True) else None


def create_app(
    spec_or_pipeline: PresetSpec | str | Path | Any,
    *,
    spec: PresetSpec | None = None,
    dataset: InteractionData | None = None,
    cache_dir: str | Path | None = None,
    max_queue: int = DEFAULT_MAX_QUEUE,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_steps: int = 50,
    device: str | torch.device = "cpu",
    torch_dtype: torch.dtype = torch.float32,
    speed: SpeedOptions | None = None,
    max_image_pixels: int | None = None,
    max_decodes: int = DEFAULT_MAX_DECODES,
    rate_limit: float | None = DEFAULT_RATE_LIMIT,
    rate_burst: int = DEFAULT_RATE_BURST,
    api_key: str | None = None,
    base_url: str = "",
    max_cache_bytes: int | None = DEFAULT_CACHE_BYTES,
    max_cache_covers: int | None = None,
) -> FastAPI:
    """The API for one model: a PresetSpec or preset name is loaded here, once; a ready pipeline as is.

    `spec` describes a ready pipeline (name, default steps and guidance, prompt length, adapter folder for
    the cache key); it defaults to a spec named "custom". `dataset` enables item ids, search, references
    and the gallery. `cache_dir` (default `$ICG_HOME/serve-cache`) holds served covers; the key includes
    preset and adapter hash, so presets may share it; it is bounded by `max_cache_bytes` / `max_cache_covers`
    (least recently used evicted). `max_image_pixels` defaults to 4x what the model's image processor keeps,
    within [1024², 4096²]. `rate_limit` (requests/s per client, None = off) and `rate_burst` feed the token
    bucket; `api_key`, when set, is required as `Authorization: Bearer` on `/v1/...`. `base_url` (e.g.
    "https://covers.example.com") starts every returned URL; "" gives paths.
    """
    if max_upload_bytes < 1024:
        raise ValueError(f"max_upload_bytes must be at least 1024, got {max_upload_bytes}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, got {max_steps}")
    if api_key is not None and len(api_key) < 8:
        raise ValueError("api_key must be at least 8 characters")
    base_url = base_url.rstrip("/")
    if isinstance(spec_or_pipeline, str | Path):
        spec_or_pipeline = get_preset(str(spec_or_pipeline))
    root = Path(cache_dir) if cache_dir is not None else icg_home() / "serve-cache"
    if isinstance(spec_or_pipeline, PresetSpec):
        spec = spec_or_pipeline
        pipe = load_cover_pipeline(spec, device, torch_dtype)  # the one load of the model for this app's life
        apply_speed_options(pipe, speed)
        pipe.set_progress_bar_config(disable=True)  # a server logs requests, not denoising steps
        pipe.context_encoder.cache = BoundedContextCache(root / "context")  # P_exp + C_ref, once per item
    else:
        pipe = spec_or_pipeline
        spec = spec if spec is not None else PresetSpec(name="custom")
    cache = CoverCache(root / "covers", max_bytes=max_cache_bytes, max_covers=max_cache_covers)
    pixel_cap = max_image_pixels if max_image_pixels is not None else upload_pixel_cap(pipe)
    slots = DecodeSlots(max_decodes)
    buckets = TokenBuckets(rate_limit, rate_burst) if rate_limit is not None else None
    catalog = Catalog(dataset) if dataset is not None else None
    user_encoder = _personalized(pipe)
    run = RunInfo.from_spec(spec)  # what every cover of this app shares (preset, models, adapter hash)
    adapter = run.adapter_hash
    worker = GenerationWorker(max_queue)
    generation = spec.generation_config()  # the preset's steps, guidance and explicit-prompt length
    default_steps = min(generation.num_inference_steps, max_steps)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        await run_in_threadpool(worker.close)

    app = FastAPI(
        title="ICG cover API",
        version="1",
        summary="Personalized cover images: item (title + reference cover) x user -> cover.",
        lifespan=lifespan,
    )
    app.state.pipeline = pipe
    app.state.spec = spec
    app.state.cache = cache
    app.state.worker = worker
    app.state.catalog = catalog
    app.state.max_image_pixels = pixel_cap
    app.add_exception_handler(RequestValidationError, validation_error)

    def url(name: str, **params: str) -> str:
        """A route's URL from the configured base (never from the request's Host header)."""
        return base_url + app.url_path_for(name, **params)

    def cover_json(metadata: dict[str, Any], cached: bool) -> dict[str, Any]:
        """A cache entry as the API answers it: plus URLs and the cache flag, less the server's own paths."""
        item_id = metadata["item"].get("item_id") if metadata["item"].get("source") == "dataset" else None
        return {
            **{k: v for k, v in metadata.items() if k not in SERVER_ONLY},
            "url": url("get_cover", cover_id=metadata["id"]),
            "reference_url": url("item_reference", item_id=item_id) if item_id else None,
            "cached": cached,
        }

    def generate_job(
        cover_id: str,
        item: CoverItem | str,
        item_info: dict,
        user: ResolvedUser,
        seed: int,
        steps: int,
        user_scale: float = 1.0,
    ) -> dict[str, Any]:
        """Runs on the worker thread: the one place the model is called."""
        if cover_id in cache and (done := cache.entry(cover_id)) is not None:
            return done  # a job for the same key finished between the request's check and now
        start = time.perf_counter()
        cover_item = catalog.cover_item(item) if isinstance(item, str) else item
        users = None
        if user.key != "none":  # an unknown id is sent as cold start: its profile alone (its key says so)
            users = [CoverUser(user_id=user.user_id if user.known else None, profile=user.profile)]
        output = pipe(
            [cover_item],
            users,
            seed=seed,
            **generation.replace(num_inference_steps=steps).to_kwargs(),
            strict_users=False,
            user_scale=user_scale,
        )
        image, meta = output.images[0], output.metadata[0]
        # the requested user id, also when it was sent as cold start (as `icg generate` records it)
        record = cover_record(meta, run, item_source=item_info["source"], user_id=user.user_id)
        metadata = {
            "id": cover_id,
            "item": item_info,
            "user": user.public(),
            **record.fields(),
            "width": image.width,
            "height": image.height,
            "generation_seconds": round(time.perf_counter() - start, 4),
        }
        cache.put(cover_id, _png_bytes(image), metadata)
        return metadata

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def gallery() -> HTMLResponse:
        return HTMLResponse(
            GALLERY_HTML, headers={"cache-control": "no-store", "content-security-policy": GALLERY_CSP}
        )

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/healthz", summary="Liveness and what is loaded")
    def healthz() -> dict[str, Any]:
        return {
            "status": "ok",
            "preset": spec.name,
            "adapter_hash": adapter,
            "personalized": user_encoder is not None,
            "dataset": catalog.name if catalog is not None else None,
            "default_steps": default_steps,
            "max_steps": max_steps,
            "max_upload_bytes": max_upload_bytes,
            "max_image_pixels": pixel_cap,
            "queue": worker.stats(),
            "cache": cache.stats(),
            "admission": {
                "max_decodes": slots.limit,
                "decoding": slots.in_use,
                "refused_busy": slots.refused,
                "rate_limit": rate_limit,
                "rate_burst": rate_burst if buckets is not None else None,
                "clients": len(buckets) if buckets is not None else 0,
                "api_key": api_key is not None,
            },
        }

    @app.post(
        "/v1/covers",
        summary="Generate (or fetch from the cache) one personalized cover",
        response_class=Response,
        responses={
            200: {
                "description": "The cover (PNG), or its metadata and URL with `format=json`",
                "content": {**PNG, "application/json": {"schema": {"type": "object"}}},
            },
            **documented(400, 401, 413, 415, 422, 429, 503),
        },
    )
    async def create_cover(
        request: Request,
        item_id: Annotated[
            str | None, Form(pattern=ID_PATTERN, description="Item of the loaded dataset")
        ] = None,
        title: Annotated[
            str | None,
            Form(min_length=1, max_length=MAX_TITLE_CHARS, pattern=TEXT_PATTERN, description="With `image`"),
        ] = None,
        image: Annotated[
            UploadFile | None, File(description="Reference cover (PNG/JPEG/WebP/GIF/BMP)")
        ] = None,
        user_id: Annotated[str | None, Form(pattern=ID_PATTERN, description="A known user")] = None,
        profile: Annotated[
            str | None,
            Form(
                max_length=MAX_PROFILE_CHARS,
                pattern=TEXT_PATTERN,
                description="e.g. 'a 24-year-old male technician' or 'loves horror and sci-fi'",
            ),
        ] = None,
        seed: Annotated[int, Form(ge=0, le=MAX_SEED)] = 0,
        steps: Annotated[
            int | None, Form(ge=1, description="Default: the preset's; at most max_steps")
        ] = None,
        user_scale: Annotated[
            float,
            Form(
                ge=0,
                le=MAX_USER_SCALE,
                description="Personalization strength: 0 = context only, 1 = as trained, >1 stronger",
            ),
        ] = 1.0,
        response_format: Annotated[Literal["png", "json"], Form(alias="format")] = "png",
    ) -> Response:
        release_slot = getattr(request.state, "release_decode_slot", lambda: None)  # see icg.serve.admission
        try:  # the shared rules (icg.validation): the same checks and messages as the CLI
            steps = default_steps if steps is None else check_steps(steps, max_steps)
            check_seed(seed)
            user_scale = check_user_scale(user_scale)
            title = check_title(title) if title is not None and title.strip() else None
        except InputError as exc:
            raise input_error(exc) from None
        # --- the item: a dataset id, or a title + uploaded reference cover
        item: CoverItem | str
        if item_id is not None:
            if title or image is not None:
                raise field_error(422, "item_id", "give item_id, or title and image, not both", "ambiguous")
            if catalog is None:
                raise field_error(422, "item_id", "no dataset is loaded: send title and image", "no_dataset")
            if item_id not in catalog.items:
                raise field_error(422, "item_id", f"unknown item id '{item_id}' in {catalog.name}", "unknown")
            item = item_id
            item_key = f"dataset:{catalog.name}:{item_id}"
            item_info = {"source": "dataset", "dataset": catalog.name, **catalog.items[item_id].public()}
        else:
            if image is None:
                raise field_error(
                    422, "image" if title else "item_id", "give item_id, or title and image", "missing"
                )
            if not title:
                raise field_error(422, "title", "an uploaded image needs a non-empty title", "missing")
            if worker.full:  # no decoding for a request that could not be queued anyway
                return _unavailable("the generation queue is full; retry later", worker.retry_after())
            data = await image.read(max_upload_bytes + 1)
            try:
                picture = await run_in_threadpool(decode_image, data, max_upload_bytes, pixel_cap)
            finally:
                del data
                release_slot()
            item = CoverItem(title=title, image=picture)
            item_key = await run_in_threadpool(upload_item_key, title, picture)
            item_info = {"source": "upload", "title": title, "content_key": item_key.split(":", 1)[1]}
        release_slot()  # nothing more to read or decode: the next upload may start
        # --- the user, then the cache, then the queue
        user = resolve_user(user_encoder, user_id, profile)
        if user.key == "none":
            user_scale = 1.0  # no user tokens: the knob changes nothing, so it must not split the cache
        cover_id = cover_key(
            item_key, user.key, spec.name, seed, steps, generation.guidance_scale, adapter, user_scale
        )
        metadata = cache.entry(cover_id) if cover_id in cache else None  # a broken entry is regenerated
        source = "hit"  # X-Cache: hit (from disk), miss (generated for this request), joined (a running job)
        if metadata is None:
            try:
                future, joined = worker.submit(
                    cover_id, lambda: generate_job(cover_id, item, item_info, user, seed, steps, user_scale)
                )
            except QueueFullError as exc:
                return _unavailable("the generation queue is full; retry later", exc.retry_after)
            except WorkerClosedError:
                return _unavailable("the server is shutting down", 5)
            source = "joined" if joined else "miss"
            try:  # shield: one client going away must not cancel a job other requests wait on
                metadata = await asyncio.shield(asyncio.wrap_future(future))
            except WorkerClosedError:
                return _unavailable("the server is shutting down", 5)
            except Exception as exc:
                logger.error("cover %s failed: %s", cover_id[:12], exc)
                raise HTTPException(status_code=500, detail="cover generation failed") from None
        headers = {"x-cover-id": cover_id, "x-cache": source}
        if response_format == "json":
            return JSONResponse(cover_json(metadata, source == "hit"), headers=headers)
        data = cache.png(cover_id)
        if data is None:  # evicted or removed between the job and now (rare): one more try costs one job
            return _unavailable("the cover left the cache before it was sent; retry", 1)
        headers.update(
            {"cache-control": COVER_CACHE_CONTROL, "content-location": url("get_cover", cover_id=cover_id)}
        )
        return _png_response(data, headers)

    @app.get(
        "/v1/covers/{cover_id}",
        name="get_cover",
        summary="A served cover (PNG) by its id",
        response_class=Response,
        responses={200: {"description": "The cover", "content": PNG}, **documented(401, 404, 429)},
    )
    def get_cover(cover_id: str) -> Response:
        data = cache.png(cover_id) if is_cover_id(cover_id) else None
        if data is None:
            raise _not_found("cover")
        return _png_response(data, {"cache-control": COVER_CACHE_CONTROL})

    @app.get(
        "/v1/covers/{cover_id}/metadata",
        summary="A served cover's metadata (prompt, seed, user, ...)",
        responses=documented(401, 404, 429),
    )
    def get_cover_metadata(cover_id: str) -> dict[str, Any]:
        metadata = cache.metadata(cover_id) if is_cover_id(cover_id) else None
        if metadata is None:
            raise _not_found("cover")
        return cover_json(metadata, cached=True)

    def require_catalog() -> Catalog:
        if catalog is None:
            raise HTTPException(status_code=404, detail="no dataset is loaded (start the server with one)")
        return catalog

    def item_url(row) -> str:
        return url("item_reference", item_id=row.item_id)

    def user_json(row: tuple[str, str | None]) -> dict[str, Any]:
        user_id, profile = row
        known = user_encoder is not None and user_id in user_encoder.vocab.users
        return {"user_id": user_id, "profile": profile, "known": known}

    def search_page(what: str, q: str, limit: int, row_json: Callable[[Any], dict]) -> dict[str, Any]:
        """One page of the gallery's item or user search: dataset, query, total hits, the first `limit`."""
        found = require_catalog()
        search = found.search_items if what == "items" else found.search_users
        total, rows = search(q, limit)
        return {"dataset": found.name, "query": q, "total": total, what: [row_json(row) for row in rows]}

    @app.get(
        "/v1/items",
        summary="Search the loaded dataset's items by title",
        responses=documented(401, 404, 422, 429),
    )
    def list_items(q: SearchQuery = "", limit: Annotated[int, Query(ge=1, le=100)] = 20) -> dict[str, Any]:
        return search_page("items", q, limit, lambda row: {**row.public(), "reference_url": item_url(row)})

    @app.get(
        "/v1/items/{item_id}", summary="One item of the loaded dataset", responses=documented(401, 404, 429)
    )
    def get_item(item_id: str) -> dict[str, Any]:
        row = require_catalog().items.get(item_id)
        if row is None:
            raise _not_found("item")
        return {**row.public(), "reference_url": item_url(row)}

    @app.get(
        "/v1/items/{item_id}/reference",
        name="item_reference",
        summary="An item's reference cover (PNG)",
        response_class=Response,
        responses={
            200: {"description": "The reference cover", "content": PNG},
            **documented(401, 404, 429),
        },
    )
    async def item_reference(item_id: str) -> Response:
        found = require_catalog()
        if item_id not in found.items:
            raise _not_found("item")
        png = await run_in_threadpool(found.reference_png, item_id)
        return Response(png, media_type="image/png", headers={"cache-control": "public, max-age=86400"})

    @app.get(
        "/v1/users",
        summary="Users of the loaded dataset (id and profile sentence)",
        responses=documented(401, 404, 422, 429),
    )
    def list_users(q: SearchQuery = "", limit: Annotated[int, Query(ge=1, le=200)] = 20) -> dict[str, Any]:
        return search_page("users", q, limit, user_json)

    document = app.openapi

    def openapi() -> dict[str, Any]:
        """FastAPI's document, with the form's rules it cannot write itself (see `_cover_form_schema`)."""
        if app.openapi_schema is None:
            doc = document()
            cover_form_schema(doc, max_steps=max_steps, personalized=user_encoder is not None)
            if api_key is not None:
                doc.setdefault("components", {})["securitySchemes"] = {
                    "bearer": {"type": "http", "scheme": "bearer"}
                }
                for path, operations in doc["paths"].items():
                    if path.startswith("/v1/"):
                        for operation in operations.values():
                            operation["security"] = [{"bearer": []}]
            app.openapi_schema = doc
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware, max_bytes=max_upload_bytes + FORM_OVERHEAD_BYTES)
    app.add_middleware(AdmissionMiddleware, buckets=buckets, api_key=api_key, slots=slots)  # before the body
    app.add_middleware(_HeadersMiddleware)
    return app


class _HeadersMiddleware:
    """No content sniffing, no referrer on every response (the gallery adds its own strict CSP)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
