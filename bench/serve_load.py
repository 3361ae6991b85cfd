"""Loopback load test of `icg serve`: N cover requests at concurrency C against one server process.

The server is started as a subprocess (`python -m icg.serve`, the same command function as `icg serve`) on a
free port of 127.0.0.1, with a fresh cover cache, so every run starts cold. The client sends
`POST /v1/covers` (dataset item id + known user id, PNG answer) from a thread pool with `urllib`: each
request has a new seed (a cache miss: a real generation) except a `--repeat-share` of them, which repeat an
earlier request (cache hits, or "joined": a job for the same cover was still queued or running). Only
loopback traffic; the request count, each request's time and the whole run are bounded, and the server is
stopped at the end.

Reported: latency p50/p95/p99/max (all, misses, hits, joined), throughput, errors by kind, server RSS (after
warm-up, at the half-way mark, at the end, sampled peak; growth from half-way to the end is what a leak
would show), and the machine.

    .venv/bin/python bench/serve_load.py [--preset tiny] [--requests 200] [--concurrency 8] [--steps N]
        [--threads 1] [--repeat-share 0.25] [--json out.json]

`--hostile` runs the hostile mixes of `bench/serve_hostile.py` instead (big-pixel uploads, a burst from one
client, bursts from many; /healthz and cache-hit p50/p99 and server RSS under each).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from serve_hostile import hostile_markdown, hostile_mixes, write_json
from serve_measure import RssSampler, cpu_name, percentiles, rss_mb

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Result:
    seconds: float
    status: int | str  # HTTP status, or the exception's name
    cache: str | None  # the server's X-Cache: hit | miss


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str, timeout: float = 5.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def post_cover(base: str, form: dict[str, str], timeout: float) -> Result:
    data = urllib.parse.urlencode(form).encode()
    start = time.perf_counter()
    try:
        with urllib.request.urlopen(f"{base}/v1/covers", data=data, timeout=timeout) as response:
            body = response.read()
            status, cache = response.status, response.headers.get("x-cache")
        if not body.startswith(PNG_MAGIC):
            status = "not-a-png"
    except urllib.error.HTTPError as exc:
        exc.read()
        status, cache = exc.code, None
    except OSError as exc:  # refused, reset, timed out
        status, cache = type(exc).__name__, None
    return Result(time.perf_counter() - start, status, cache)


def request_plan(n: int, items: int, users: int, repeat_share: float, seed: int = 0) -> list[dict[str, str]]:
    """N requests: new (item, user, seed) triples, and a share repeating an earlier one."""
    rng = random.Random(seed)
    plan: list[dict[str, str]] = []
    uniques: list[dict[str, str]] = []
    for i in range(n):
        if uniques and rng.random() < repeat_share:
            plan.append(rng.choice(uniques))
            continue
        form = {"item_id": str(rng.randint(1, items)), "user_id": str(rng.randint(1, users)), "seed": str(i)}
        uniques.append(form)
        plan.append(form)
    return plan


def start_server(args: argparse.Namespace, port: int, cache_dir: Path, log: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "icg.serve", "--preset", args.preset, "--dataset", "ml-100k"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--cache-dir", str(cache_dir)]
    command += ["--max-queue", str(args.max_queue), "--log-level", "warning"]
    if args.threads is not None:
        command += ["--threads", str(args.threads)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TQDM_DISABLE", "1")
    with log.open("w") as handle:
        return subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=ROOT)


def wait_healthy(base: str, proc: subprocess.Popen, log: Path, limit: float) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            return get_json(f"{base}/healthz", timeout=2)
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"server not healthy after {limit:.0f} s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown (the worker finishes its job)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def run(args: argparse.Namespace) -> dict:
    plan = request_plan(args.requests, args.items, args.users, args.repeat_share)
    with tempfile.TemporaryDirectory(prefix="icg-serve-load-") as tmp:
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "server.log"
        started = time.perf_counter()
        proc = start_server(args, port, Path(tmp) / "cache", log)
        try:
            health = wait_healthy(base, proc, log, args.start_timeout)
            startup_s = time.perf_counter() - started
            steps = args.steps if args.steps is not None else health["default_steps"]
            common = {"steps": str(steps), "format": "png"}
            warm = [  # seeds the plan never uses: the first generations (and item contexts) are not timed
                post_cover(
                    base, {"item_id": str(k), "user_id": str(k), "seed": str(10**7 + k), **common}, 600
                )
                for k in (1, 2)
            ]
            if any(r.status != 200 for r in warm):
                raise SystemExit(f"warm-up failed: {warm}\n{log.read_text()[-3000:]}")
            rss_warm = rss_mb(proc.pid)
            sampler = RssSampler(proc.pid)
            sampler.start()
            results: list[Result | None] = [None] * len(plan)
            done = 0
            rss_half: list[float | None] = []
            lock = threading.Lock()
            deadline = time.monotonic() + args.deadline

            def one(index: int) -> None:
                nonlocal done
                if time.monotonic() > deadline:
                    results[index] = Result(0.0, "skipped (deadline)", None)
                else:
                    results[index] = post_cover(base, {**plan[index], **common}, args.timeout)
                with lock:
                    done += 1
                    if done == len(plan) // 2:
                        rss_half.append(rss_mb(proc.pid))

            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                list(pool.map(one, range(len(plan))))
            wall = time.perf_counter() - t0
            sampler.stop.set()
            sampler.join()
            rss_end = rss_mb(proc.pid)
            rss_hwm = rss_mb(proc.pid, "VmHWM")
            final = get_json(f"{base}/healthz")
        finally:
            stop_server(proc)
    done_results = [r for r in results if r is not None]
    ok = [r for r in done_results if r.status == 200]
    errors: dict[str, int] = {}
    for r in done_results:
        if r.status != 200:
            errors[str(r.status)] = errors.get(str(r.status), 0) + 1
    return {
        "preset": args.preset,
        "requests": len(plan),
        "concurrency": args.concurrency,
        "steps": steps,
        "unique_requests": len({tuple(sorted(p.items())) for p in plan}),
        "startup_s": round(startup_s, 2),
        "wall_s": round(wall, 2),
        "throughput_rps": round(len(ok) / wall, 3) if wall > 0 else None,
        "ok": len(ok),
        "errors": errors,
        "cache_hits": sum(r.cache == "hit" for r in ok),
        "joined": sum(r.cache == "joined" for r in ok),
        "latency_ms": percentiles([r.seconds for r in ok]),
        "latency_miss_ms": percentiles([r.seconds for r in ok if r.cache == "miss"]),
        "latency_hit_ms": percentiles([r.seconds for r in ok if r.cache == "hit"]),
        "latency_joined_ms": percentiles([r.seconds for r in ok if r.cache == "joined"]),
        "rss_mb": {
            "after_warmup": rss_warm,
            "half_way": rss_half[0] if rss_half else None,
            "end": rss_end,
            "peak_during_load": sampler.peak,
            "process_high_water": rss_hwm,
        },
        "server_queue": final["queue"],
        "server_cache_covers": final["cache"]["covers"],
        "machine": {
            "platform": platform.platform(),
            "processor": cpu_name(),
            "cpu_count": os.cpu_count(),
            "server_torch_threads": args.threads if args.threads is not None else "torch default",
            "python": platform.python_version(),
            "torch": metadata.version("torch"),
            "fastapi": metadata.version("fastapi"),
            "uvicorn": metadata.version("uvicorn"),
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
        },
        "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]),
    }


def run_hostile(args: argparse.Namespace) -> tuple[list[dict], dict]:
    with tempfile.TemporaryDirectory(prefix="icg-serve-hostile-") as tmp:
        port = free_port()
        log = Path(tmp) / "server.log"
        proc = start_server(args, port, Path(tmp) / "cache", log)
        try:
            health = wait_healthy(f"http://127.0.0.1:{port}", proc, log, args.start_timeout)
            reports = hostile_mixes(port, proc.pid, health)
        finally:
            stop_server(proc)
    return reports, health


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(report: dict) -> str:
    lat, miss, hit = report["latency_ms"], report["latency_miss_ms"], report["latency_hit_ms"]
    joined, rss = report["latency_joined_ms"], report["rss_mb"]
    errors = sum(report["errors"].values())
    error_text = (
        "0" if not errors else f"{errors} ({', '.join(f'{k}: {v}' for k, v in report['errors'].items())})"
    )
    m = report["machine"]
    lines = [
        f"`{report['command']}`",
        "",
        "| preset | requests (unique) | conc. | steps | ok | errors | hits / joined | wall s | req/s |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {report['preset']} | {report['requests']} ({report['unique_requests']}) "
        f"| {report['concurrency']} | {report['steps']} | {report['ok']} | {error_text} "
        f"| {report['cache_hits']} / {report['joined']} | {report['wall_s']} | {report['throughput_rps']} |",
        "",
        "| latency ms | p50 | p95 | p99 | max |",
        "|---|---|---|---|---|",
    ]
    rows = (("all", lat), ("misses (generated)", miss), ("hits (from disk)", hit), ("joined", joined))
    for name, row in rows:
        lines.append(f"| {name} | {' | '.join(_fmt(row[k]) for k in ('p50', 'p95', 'p99', 'max'))} |")
    lines += [
        "",
        "| server RSS MiB | after warm-up | half-way | end | peak during load | process high-water |",
        "|---|---|---|---|---|---|",
        f"| | {_fmt(rss['after_warmup'])} | {_fmt(rss['half_way'])} | {_fmt(rss['end'])} "
        f"| {_fmt(rss['peak_during_load'])} | {_fmt(rss['process_high_water'])} |",
        "",
        f"Server: start-up {report['startup_s']} s (model + dataset load), queue {report['server_queue']}, "
        f"{report['server_cache_covers']} covers cached.",
        f"Machine: {m['processor']}, {m['cpu_count']} cores, {m['platform']}, Python {m['python']}, torch "
        f"{m['torch']}, fastapi {m['fastapi']}, uvicorn {m['uvicorn']}, server torch threads "
        f"{m['server_torch_threads']}, load average at the end {m['load_average_end']}.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", help="tiny, mini or a preset folder")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument(
        "--steps", type=int, default=None, help="DDIM steps per cover (default: the preset's)"
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="server torch threads (1 is fastest on 2 busy cores)"
    )
    parser.add_argument("--repeat-share", type=float, default=0.25, help="share of requests repeating one")
    parser.add_argument("--items", type=int, default=20, help="item ids 1..N of ml-100k")
    parser.add_argument("--users", type=int, default=10, help="user ids 1..N of ml-100k")
    parser.add_argument(
        "--max-queue", type=int, default=32, help="server queue bound (>= concurrency: no 503)"
    )
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument(
        "--deadline", type=float, default=1800.0, help="no new request after this many seconds"
    )
    parser.add_argument("--start-timeout", type=float, default=300.0, help="seconds for the server to load")
    parser.add_argument("--json", type=Path, default=None, help="also write the report as JSON")
    parser.add_argument("--hostile", action="store_true", help="run the hostile mixes (serve_hostile.py)")
    args = parser.parse_args()
    if args.hostile:
        reports, health = run_hostile(args)
        write_json(args.json, {"mixes": reports, "server": health})
        print(hostile_markdown(reports, " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), health))
        return
    if args.requests < 1 or args.concurrency < 1 or not 0 <= args.repeat_share < 1:
        parser.error("need --requests >= 1, --concurrency >= 1 and 0 <= --repeat-share < 1")
    report = run(args)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2))
    print(markdown(report))


if __name__ == "__main__":
    main()
