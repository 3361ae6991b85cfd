"""The rating web app (FastAPI): the page, a per-rater shuffled queue, covers by id, and rating submission.

What the browser can learn: image ids (random hex), captions, counts. Never a method, an item or a user id,
never a file path. Image ids are looked up in the manifest; they are never joined into a path, so
`../../etc/passwd` is just an unknown id (422 in a body, 404 in a URL). Bodies larger than `max_body_bytes`
get 413 before any parsing.

Who rates: only the holder of an invite token from `icg rate make-study` / `icg rate invite` (403 for any
other token); the rater is the token's rater id, never a name typed by the client, so one person cannot pose
as many raters. A repeated rating of an image by the same token replaces the earlier score (see
`icg.rating.store`). Covers are sent without `Last-Modified` or `ETag`, which would order them by the time
each method's files were written.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Annotated

from fastapi import FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from icg.errors import DataError
from icg.rating.page import DEFAULT_QUESTION, render_page
from icg.rating.store import RatingStore
from icg.rating.study import IMAGE_ID_PATTERN, TOKEN_PATTERN, Study, load_study

logger = logging.getLogger(__name__)

Token = Annotated[str, StringConstraints(strip_whitespace=True, pattern=TOKEN_PATTERN)]
_SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        b"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    ),
]


class RatingIn(BaseModel):
    """One submitted rating by the holder of an invite token. Unknown fields (e.g. a `method`) are refused."""

    model_config = ConfigDict(extra="forbid")

    token: Token
    image_id: Annotated[str, StringConstraints(pattern=IMAGE_ID_PATTERN)]
    score: Annotated[int, Field(strict=True, ge=1, le=3)]


class RatingOut(BaseModel):
    replaced: bool  # True when this rater had rated the image before (the new score replaced it)
    done: int
    total: int


class QueueItem(BaseModel):
    id: str
    url: str
    caption: str


class QueueOut(BaseModel):
    rater: str
    total: int
    done: int
    remaining: list[QueueItem]


def rater_order(study: Study, rater: str) -> list[str]:
    """All image ids in an order shuffled per rater: seeded by (study seed, rater), stable across restarts."""
    ids = sorted(image.id for image in study.images)
    random.Random(f"{study.seed}:{rater}").shuffle(ids)
    return ids


class BodyLimitMiddleware:
    """Refuse request bodies over `max_bytes` with 413, whether or not a Content-Length header is sent."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # buffer the (small) body so an oversize chunked body is caught before the app reads it
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        payload = b'{"detail":"request body too large (limit %d bytes)"}' % self.max_bytes
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"%d" % len(payload)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})


class SecurityHeadersMiddleware:
    """Add no-sniff, no-framing, no-referrer and a CSP that allows only this origin to every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *_SECURITY_HEADERS]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _unknown_token(where: str) -> HTTPException:
    detail = [{"loc": [where, "token"], "msg": "unknown invite token", "type": "unknown_token"}]
    return HTTPException(status_code=403, detail=detail)


def _unknown_image(where: str) -> HTTPException:
    status = 404 if where == "path" else 422
    detail = [{"loc": [where, "image_id"], "msg": "unknown image id", "type": "unknown_image"}]
    return HTTPException(status_code=status, detail=detail)


def create_app(
    study: Study | str | Path,
    db_path: str | Path | None = None,
    *,
    max_body_bytes: int = 2048,
    question: str = DEFAULT_QUESTION,
) -> FastAPI:
    """Build the app for one study; ratings go to `db_path` (default: `<study>/ratings.sqlite`)."""
    if not isinstance(study, Study):
        study = load_study(study)
    if max_body_bytes < 256:
        raise ValueError(f"max_body_bytes must be at least 256, got {max_body_bytes}")
    if not study.invites:
        raise DataError(
            "this study has no rater invites (raters.json)",
            path=study.root,
            expected="invites made by `icg rate make-study` or `icg rate invite --study ... --raters N`",
        )
    store = RatingStore(db_path if db_path is not None else study.default_db)
    by_id = study.by_id
    total = len(study.images)
    page = render_page(title=f"Cover rating: {study.name}", total=total, question=question)

    app = FastAPI(title="ICG cover rating", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.study = study
    app.state.store = store

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers={"cache-control": "no-store"})

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)  # browsers ask for it; a 404 would be noise in the console

    @app.get("/api/queue", response_model=QueueOut)
    def queue(token: Annotated[Token, Query()]) -> QueueOut:
        rater = study.rater_of(token)
        if rater is None:
            raise _unknown_token("query")
        rated = store.rated_by(rater)
        remaining = [
            QueueItem(id=image_id, url=f"images/{image_id}", caption=by_id[image_id].caption)
            for image_id in rater_order(study, rater)
            if image_id not in rated
        ]
        done = sum(1 for image_id in rated if image_id in by_id)
        return QueueOut(rater=rater, total=total, done=done, remaining=remaining)

    @app.post("/api/ratings", response_model=RatingOut)
    def submit(rating: RatingIn) -> RatingOut:
        rater = study.rater_of(rating.token)
        if rater is None:
            raise _unknown_token("body")
        image = by_id.get(rating.image_id)
        if image is None:
            raise _unknown_image("body")
        replaced = store.add(rater, image.id, image.method, rating.score)
        done = sum(1 for image_id in store.rated_by(rater) if image_id in by_id)
        return RatingOut(replaced=replaced, done=done, total=total)

    @app.get("/images/{image_id}")
    def cover(image_id: str) -> Response:
        path = study.path_of(image_id)
        if path is None:
            raise _unknown_image("path")
        # bytes, not FileResponse: no Last-Modified / ETag (write times would sort the covers by method)
        return Response(
            path.read_bytes(), media_type="image/png", headers={"cache-control": "private, max-age=3600"}
        )

    app.add_middleware(BodyLimitMiddleware, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeadersMiddleware)
    return app
