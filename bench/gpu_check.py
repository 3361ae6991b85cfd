"""GPU check: every model path of ICG, and the user-facing commands, on one device; one PASS/FAIL line each.

    python bench/gpu_check.py --device cuda --out $OUT/gpu_check.json    # on a GPU machine, ≤ 4 minutes
    python bench/gpu_check.py --device cpu --quick                       # the same checks on the CPU

1. `icg.device_check.PATHS` (context encoder, user encoder + projector, SD1.5 and Flux cover pipelines,
   rewards, adapter-training steps for both backbones) on the device in every dtype asked (default bfloat16
   and float16 on CUDA, float32 on the CPU), at tiny sizes;
2. the same SD1.5 paths at SD1.5 shapes (random weights: UNet 860 M, VAE, CLIP-L text; 512² covers);
3. the commands as a user runs them (`python -m icg.cli`): `generate` (tiny, tiny-flux), two steps of
   `train adapter`, one `serve` request, one `batch` job (local executor).
Prints the machine and versions first and a summary table last; exits 1 when any check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from icg.device_check import CheckResult, run_paths  # noqa: E402

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def machine() -> dict[str, str]:
    import diffusers
    import transformers

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffusers": diffusers.__version__,
        "cpu": platform.processor() or platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = str(torch.version.cuda)
    return info


def command(name: str, args: list[str], env: dict[str, str], timeout: float) -> CheckResult:
    """`python -m icg.cli ARGS` as a user runs it; PASS when it exits 0."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "icg.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
        )
        ok = done.returncode == 0
        tail = (done.stdout + done.stderr).strip().splitlines()
        detail = (tail[-1] if tail else "") if ok else " | ".join(tail[-3:])
    except subprocess.TimeoutExpired:
        ok, detail = False, f"timed out after {timeout:.0f} s"
    return CheckResult(name, ok, detail[:300], time.perf_counter() - started)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serve_request(device: str, env: dict[str, str], timeout: float) -> CheckResult:
    """Start `icg serve --preset tiny`, wait for /healthz, POST one cover for a dataset item, stop it."""
    started = time.perf_counter()
    port = free_port()
    args = ["serve", "--preset", "tiny", "--device", device, "--port", str(port)]
    server = subprocess.Popen(
        [sys.executable, "-m", "icg.cli", *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    base = f"http://127.0.0.1:{port}"
    try:
        while time.perf_counter() - started < timeout:
            if server.poll() is not None:
                raise RuntimeError(f"server exited: {server.stdout.read().decode()[-300:]}")
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=2).read()
                break
            except OSError:
                time.sleep(0.5)
        form = {"item_id": "1", "user_id": "1", "steps": 2, "format": "json"}
        request = urllib.request.Request(f"{base}/v1/covers", data=urllib.parse.urlencode(form).encode())
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            payload = json.loads(reply.read())
        ok, detail = True, f"cover {payload.get('id', '?')[:12]}"
    except Exception as err:  # the check reports and goes on
        ok, detail = False, f"{type(err).__name__}: {err}"[:300]
    finally:
        server.terminate()
        server.wait(timeout=10)
    return CheckResult("icg serve: one request", ok, detail, time.perf_counter() - started)


def commands(device: str, work: Path) -> list[CheckResult]:
    path = os.pathsep.join(p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "ICG_HOME": str(work / "home"),
        "HF_HUB_OFFLINE": "1",
    }
    gen = ["--item-id", "1", "--user-id", "1", "--steps", "2", "--device", device]
    train = ["--stage", "init", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2"]
    batch = ["--max-items", "2", "--max-users", "4", "--segments", "2", "--steps", "2", "--executor", "local"]
    return [
        command("icg generate --preset tiny",
                ["generate", "--preset", "tiny", "--out", str(work / "g"), *gen], env, 300),
        command("icg generate --preset tiny-flux",
                ["generate", "--preset", "tiny-flux", "--out", str(work / "gf"), *gen], env, 300),
        command("icg train adapter (2 steps)",
                ["train", "adapter", "--preset", "mini", "--out", str(work / "t"), *train], env, 300),
        serve_request(device, env, 120),
        command("icg batch (local executor)",
                ["batch", "--preset", "tiny", "--out", str(work / "b"), *batch,
                 "--dtype", "bfloat16" if device.startswith("cuda") else "float32"], env, 300),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", action="append", choices=list(DTYPES), help="repeatable")
    parser.add_argument("--quick", action="store_true", help="tiny sizes only, no SD1.5 shapes, no commands")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    dtypes = args.dtype or (["bfloat16", "float16"] if cuda else ["float32"])
    info = machine()
    print("machine:", json.dumps(info), flush=True)
    results: list[CheckResult] = []
    for name in dtypes:
        for r in run_paths(args.device, DTYPES[name]):
            r.name = f"[tiny {name}] {r.name}"
            print(r.line(), flush=True)
            results.append(r)
    if not args.quick:
        shapes = ["SD1.5 cover pipeline", "adapter training step, SD1.5 (init, reward)"]
        for name in dtypes if cuda else []:  # SD1.5 shapes need a GPU's memory and speed
            for r in run_paths(args.device, DTYPES[name], names=shapes, shapes="sd15"):
                r.name = f"[SD1.5 shapes {name}] {r.name}"
                print(r.line(), flush=True)
                results.append(r)
        with tempfile.TemporaryDirectory(prefix="icg-gpu-check-") as tmp:
            for r in commands(args.device, Path(tmp)):
                print(r.line(), flush=True)
                results.append(r)
    failed = [r for r in results if r.status == "FAIL"]
    skipped = [r for r in results if r.status == "SKIP"]
    passed = len(results) - len(failed) - len(skipped)
    print(f"\n{passed} passed, {len(failed)} failed, {len(skipped)} skipped  (device {args.device})")
    for r in failed + skipped:
        print(f"  {r.status}", r.name, "—", r.detail)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        rows = [vars(r) | {"status": r.status} for r in results]
        args.out.write_text(json.dumps({"machine": info, "device": args.device, "results": rows}, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
