"""Admission before work: who may ask (API key), how often (token bucket), how much at once (decode slots).

All of it runs in an ASGI middleware *before* the request body is read, so a refused request costs the
server a few microseconds and no memory:

1. `/healthz` is always answered (monitoring must see an overloaded server).
2. A per-client token bucket (`rate` requests/s, `burst` at once; client = the socket's peer address) answers
   429 with `Retry-After` once a client's bucket is empty. Buckets are kept for at most `max_clients` peers.
3. With an API key configured, `/v1/...` needs `Authorization: Bearer <key>` (401 otherwise).
4. `POST /v1/covers` must get one of `max_decodes` decode slots within `slot_wait_s` (503 + `Retry-After`
   otherwise) before its body is read; the route gives the slot back once its upload is decoded, so at most
   `max_decodes` uploads are ever read and decoded at once, whatever the number of clients.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from starlette.types import ASGIApp, Receive, Scope, Send

PUBLIC_PATHS = ("/healthz",)
API_PREFIX = "/v1/"


class TokenBuckets:
    """One token bucket per client: `rate` tokens/s refill up to `burst`; a request takes one token."""

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_clients: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0 requests/s, got {rate}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1, got {burst}")
        self.rate = float(rate)
        self.burst = int(burst)
        self.max_clients = max_clients
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # client → (tokens, stamp)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0.0 when the request may go ahead, else the seconds until the client's next token."""
        now = self.clock()
        with self._lock:
            tokens, stamp = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - stamp) * self.rate)
            wait = 0.0
            if tokens >= 1.0:
                tokens -= 1.0
            else:
                wait = (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens, now)  # most recently seen last
            while (
                len(self._buckets) > self.max_clients
            ):  # forget the longest-idle client (its bucket is full)
                self._buckets.popitem(last=False)
            return wait

    def __len__(self) -> int:
        return len(self._buckets)


class DecodeSlots:
    """At most `limit` requests between "body not yet read" and "upload decoded"."""

    def __init__(self, limit: int, wait_s: float = 2.0) -> None:
        if limit < 1:
            raise ValueError(f"max_decodes must be at least 1, got {limit}")
        self.limit = limit
        self.wait_s = wait_s
        self._semaphore: asyncio.Semaphore | None = None  # created on the server's event loop
        self.in_use = 0
        self.refused = 0

    def _sem(self) -> asyncio.Semaphore:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.limit)
        return self._semaphore

    async def acquire(self) -> Callable[[], None] | None:
        """A release function (idempotent), or None when no slot freed up within `wait_s`."""
        semaphore = self._sem()
        try:
            await asyncio.wait_for(semaphore.acquire(), self.wait_s)
        except TimeoutError:
            self.refused += 1
            return None
        self.in_use += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_use -= 1
                semaphore.release()

        return release


def bearer_ok(headers: list[tuple[bytes, bytes]], api_key: str) -> bool:
    """Whether an `Authorization: Bearer <key>` header carries the key (compared in constant time)."""
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode()):
                return True
    return False


class AdmissionMiddleware:
    """Rate limit, API key and decode slots, in that order, before the app reads a body."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        buckets: TokenBuckets | None,
        api_key: str | None,
        slots: DecodeSlots,
        upload_path: str = "/v1/covers",
    ) -> None:
        self.app = app
        self.buckets = buckets
        self.api_key = api_key
        self.slots = slots
        self.upload_path = upload_path
        self.limited = 0
        self.unauthorized = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        if self.buckets is not None:
            client = (scope.get("client") or ("unknown", 0))[0]
            wait = self.buckets.take(client)
            if wait > 0:
                self.limited += 1
                retry = str(max(1, math.ceil(wait)))
                await _refuse(
                    send, 429, "too many requests from this client; retry later", [retry_after(retry)]
                )
                return
        protected = self.api_key is not None and scope["path"].startswith(API_PREFIX)
        if protected and not bearer_ok(scope.get("headers") or [], self.api_key):
            self.unauthorized += 1
            headers = [(b"www-authenticate", b'Bearer realm="icg"')]
            await _refuse(send, 401, "an API key is required (Authorization: Bearer <key>)", headers)
            return
        if scope["method"] == "POST" and scope["path"] == self.upload_path:
            release = await self.slots.acquire()
            if release is None:
                await _refuse(
                    send, 503, "the server is busy reading uploads; retry later", [retry_after("1")]
                )
                return
            scope.setdefault("state", {})["release_decode_slot"] = release
            try:
                await self.app(scope, receive, send)
            finally:
                release()
            return
        await self.app(scope, receive, send)


def retry_after(seconds: str) -> tuple[bytes, bytes]:
    return (b"retry-after", seconds.encode())


async def _refuse(send: Send, status: int, detail: str, headers: list[tuple[bytes, bytes]]) -> None:
    payload = b'{"detail":"%s"}' % detail.encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(payload)),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
