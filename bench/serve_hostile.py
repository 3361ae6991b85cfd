"""Hostile load on `icg serve` (loopback only): big-pixel uploads, a burst from one client, bursts from many.

Run through `bench/serve_load.py --hostile` (or directly). One server subprocess (the same command function as
`icg serve`, default admission settings: 10 requests/s per client with bursts of 30, 2 decode slots, the
pixel cap from the model) on 127.0.0.1. Clients bind distinct loopback source addresses (127.0.0.N; Linux
routes all of 127/8 to lo), so "one client" and "many clients" are distinct peers to the per-client limit.
While each mix runs, a probe client (its own address) asks `/healthz` every 50 ms and a cached cover every
100 ms; reported are their p50/p99, the answers of the mix by status, and the server's RSS before, after and
at its peak. Targets (issue 19): `/healthz` p99 <= 100 ms and RSS growth <= 200 MB under the 40-upload burst.

Mixes:
- `big-pixels`: 40 concurrent uploads of a 4000x4000 PNG (~46 KB on the wire, 48 MB as RGB), 40 clients.
- `at-cap-uploads`: 40 concurrent uploads of distinct images just under the pixel cap (decoded, then
  queued or refused with 503), 40 clients.
- `one-client-burst`: 200 requests for a cached cover from one client, 20 at a time (cheap requests, so the
  client outruns its token bucket).
- `many-clients`: 40 clients x 5 requests (half cache hits, half new covers), all at once.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from serve_measure import RssSampler, cpu_name, percentiles, rss_mb

PROBE_ADDRESS = "127.0.0.2"


def png_bytes(side: int, color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def request(
    port: int, method: str, path: str, *, source: str, body: bytes | None = None, headers: dict | None = None
) -> tuple[int | str, float, dict]:
    """One HTTP request from loopback address `source` → (status or error name, seconds, headers)."""
    start = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - start, dict(response.getheaders())
    except OSError as exc:
        return type(exc).__name__, time.perf_counter() - start, {}
    finally:
        conn.close()


def multipart(fields: dict[str, str], image: bytes | None) -> tuple[bytes, dict[str, str]]:
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        )
    if image is not None:
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="c.png"\r\n'
        parts.append(head.encode() + b"Content-Type: image/png\r\n\r\n" + image + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"content-type": f"multipart/form-data; boundary={boundary}"}


def form(fields: dict[str, str]) -> tuple[bytes, dict[str, str]]:
    from urllib.parse import urlencode

    return urlencode(fields).encode(), {"content-type": "application/x-www-form-urlencoded"}


class Probe(threading.Thread):
    """Asks /healthz every 50 ms and a cached cover every 100 ms until stopped."""

    def __init__(self, port: int, hit_form: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.port, self.hit_form = port, hit_form
        self.health: list[float] = []
        self.hits: list[float] = []
        self.bad: Counter = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        tick = 0
        while not self.stop.is_set():
            status, seconds, _ = request(self.port, "GET", "/healthz", source=PROBE_ADDRESS)
            self.health.append(seconds) if status == 200 else self.bad.update([f"healthz {status}"])
            if tick % 2 == 0:
                body, headers = form(self.hit_form)
                status, seconds, got = request(
                    self.port, "POST", "/v1/covers", source=PROBE_ADDRESS, body=body, headers=headers
                )
                if status == 200 and got.get("x-cache") == "hit":
                    self.hits.append(seconds)
                else:
                    self.bad.update([f"hit {status} {got.get('x-cache')}"])
            tick += 1
            self.stop.wait(0.05)


def run_mix(port: int, pid: int, name: str, jobs: list, concurrency: int, hit_form: dict[str, str]) -> dict:
    """Send `jobs` (callables → status) `concurrency` at a time while the probe runs."""
    time.sleep(1.0)  # let the server settle (and the probe's bucket refill) between mixes
    probe = Probe(port, hit_form)
    sampler = RssSampler(pid, every=0.05)
    rss_before = rss_mb(pid)
    sampler.start()
    probe.start()
    time.sleep(0.5)  # a few quiet probes first
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        statuses = list(pool.map(lambda job: job(), jobs))
    wall = time.perf_counter() - t0
    time.sleep(0.5)
    probe.stop.set()
    probe.join()
    sampler.stop.set()
    sampler.join()
    rss_after = rss_mb(pid)
    return {
        "mix": name,
        "requests": len(jobs),
        "concurrency": concurrency,
        "wall_s": round(wall, 2),
        "answers": dict(Counter(str(s) for s in statuses)),
        "healthz_ms": percentiles(probe.health),
        "healthz_n": len(probe.health),
        "cache_hit_ms": percentiles(probe.hits),
        "cache_hit_n": len(probe.hits),
        "probe_problems": dict(probe.bad),
        "rss_mb": {"before": rss_before, "after": rss_after, "peak": sampler.peak},
    }


def hostile_mixes(port: int, pid: int, health: dict) -> list[dict]:
    steps = str(health["default_steps"])
    hit_form = {"item_id": "1", "user_id": "1", "seed": "424242", "steps": steps}
    body, headers = form(hit_form)
    status, _, _ = request(port, "POST", "/v1/covers", source=PROBE_ADDRESS, body=body, headers=headers)
    if status != 200:
        raise SystemExit(f"could not make the cached cover: {status}")
    cap = int(health.get("max_image_pixels", 4096 * 4096))  # servers before issue 19 had a fixed 4096² cap
    big = png_bytes(4000, (30, 90, 160))
    reports = []

    def upload(client: int, image: bytes, title: str):
        fields = {"title": title, "user_id": "1", "steps": steps}
        payload, head = multipart(fields, image)
        return lambda: request(
            port, "POST", "/v1/covers", source=f"127.0.0.{client}", body=payload, headers=head
        )[0]

    jobs = [upload(10 + k, big, f"Big {k}") for k in range(40)]
    reports.append(run_mix(port, pid, "big-pixels (40 x 4000x4000 PNG)", jobs, 40, hit_form))
    reports[-1]["upload_bytes"] = len(big)

    side = int(cap**0.5) - 1
    at_cap = [png_bytes(side, (k * 6, 255 - k * 6, 77)) for k in range(40)]
    jobs = [upload(60 + k, at_cap[k], f"At cap {k}") for k in range(40)]
    reports.append(run_mix(port, pid, f"at-cap-uploads (40 x {side}x{side})", jobs, 40, hit_form))

    def cover(client: int, fields: dict[str, str]):
        payload, head = form({**fields, "steps": steps})
        return lambda: request(
            port, "POST", "/v1/covers", source=f"127.0.0.{client}", body=payload, headers=head
        )[0]

    jobs = [cover(3, {"item_id": "1", "user_id": "1", "seed": "424242"}) for _ in range(200)]  # cheap: hits
    reports.append(run_mix(port, pid, "one-client-burst (200 cache hits from 1 client)", jobs, 20, hit_form))

    jobs = []
    for client in range(40):
        for k in range(5):
            seed = "424242" if k % 2 == 0 else str(1000 + client * 5 + k)
            jobs.append(cover(110 + client, {"item_id": "1", "user_id": "1", "seed": seed}))
    reports.append(run_mix(port, pid, "many-clients (40 clients x 5)", jobs, 40, hit_form))
    return reports


def hostile_markdown(reports: list[dict], command: str, health: dict) -> str:
    def fmt(value, digits=0):
        return "-" if value is None else f"{value:.{digits}f}"

    lines = [
        f"`{command}`",
        "",
        f"Server admission: {json.dumps(health.get('admission'))}; "
        f"pixel cap {health.get('max_image_pixels')}.",
        "",
        "| mix | answers | wall s | /healthz p50 / p99 ms (n) | cache hit p50 / p99 ms (n) "
        "| RSS MiB before → after (peak; peak growth) |",
        "|---|---|---|---|---|---|",
    ]
    for r in reports:
        h, c, rss = r["healthz_ms"], r["cache_hit_ms"], r["rss_mb"]
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items()))
        lines.append(
            f"| {r['mix']} | {answers} | {r['wall_s']} "
            f"| {fmt(h['p50'])} / {fmt(h['p99'])} ({r['healthz_n']}) "
            f"| {fmt(c['p50'])} / {fmt(c['p99'])} ({r['cache_hit_n']}) "
            f"| {fmt(rss['before'])} → {fmt(rss['after'])} ({fmt(rss['peak'])}; "
            f"+{fmt(rss['peak'] - rss['before'])}) |"
        )
    lines += [
        "",
        f"Machine: {cpu_name()}, {os.cpu_count()} cores, load average at the end "
        f"{[round(x, 2) for x in os.getloadavg()]}.",
    ]
    problems = {r["mix"]: r["probe_problems"] for r in reports if r["probe_problems"]}
    if problems:
        lines.append(f"Probe answers other than 200 (hit): {problems}")
    return "\n".join(lines)


def write_json(path: Path | None, payload: dict) -> None:
    if path is not None:
        path.write_text(json.dumps(payload, indent=2))
