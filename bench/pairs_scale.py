"""Benchmark: preference pairs from 10 M synthetic interactions of 1 M users (target ≤ 60 s, ≤ 4 GB peak).

Ours (`icg.data.pairs.build_pairs`) runs beside a straightforward pandas baseline (groupby rank + merge on
user) on the same Parquet file, each in a fresh process, so wall time and peak RSS are each method's own
(reading the Parquet file included). Both must produce the same number of pairs.

    .venv/bin/python bench/pairs_scale.py [--interactions 10000000] [--users 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def synthesize(path: Path, n_interactions: int, n_users: int, n_items: int, seed: int = 0) -> None:
    """Users with a skewed activity, popular items more likely, ratings 1–5; string ids like real data."""
    rng = np.random.default_rng(seed)
    activity = rng.pareto(1.5, n_users) + 1.0
    draws = int(n_interactions * 1.05)  # duplicates (user, item) are dropped below, then trimmed to size
    user = rng.choice(n_users, size=draws, p=activity / activity.sum())
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    item = rng.choice(n_items, size=draws, p=popularity / popularity.sum())
    frame = pd.DataFrame(
        {
            "user_id": pd.Series(user).astype(str),
            "item_id": pd.Series(item).astype(str),
            "signal": rng.integers(1, 6, size=draws).astype(np.float64),
            "timestamp": rng.integers(8e8, 9e8, size=draws),
        }
    ).drop_duplicates(["user_id", "item_id"])
    if len(frame) < n_interactions:
        raise SystemExit(f"only {len(frame)} distinct interactions; lower --interactions or raise --items")
    frame = frame.iloc[:n_interactions]
    frame.to_parquet(path, index=False)


def baseline_pairs(interactions: pd.DataFrame, k1: int, k2: int, min_interactions: int) -> pd.DataFrame:
    """The obvious pandas way: filter with groupby size, rank with groupby cumcount, merge pos × neg."""
    counts = interactions.groupby("user_id")["item_id"].transform("size")
    kept = interactions[counts >= min_interactions]
    kept = kept.sort_values(["user_id", "signal"], ascending=[True, False], kind="stable")
    rank = kept.groupby("user_id").cumcount()
    n = kept.groupby("user_id")["item_id"].transform("size")
    pos = kept[rank < k1][["user_id", "item_id", "signal"]]
    neg = kept[rank >= n - k2][["user_id", "item_id", "signal"]]
    pairs = pos.merge(neg, on="user_id", suffixes=("_pos", "_neg"))
    return pairs[pairs["signal_pos"] > pairs["signal_neg"]]


def run_one(method: str, path: str) -> None:
    """Child process: load the Parquet file, build pairs, print a JSON line with time and peak RSS."""
    start = time.perf_counter()
    interactions = pd.read_parquet(path)
    loaded = time.perf_counter()
    if method == "ours":
        from icg.data.pairs import PairConfig, build_pairs

        pairs, _ = build_pairs(interactions, PairConfig(k1=5, k2=5))
    else:
        pairs = baseline_pairs(interactions, 5, 5, 6)
    end = time.perf_counter()
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    result = {"method": method, "pairs": len(pairs), "load_s": loaded - start, "build_s": end - loaded}
    print(json.dumps({**result, "total_s": end - start, "peak_rss_gb": peak_gb}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interactions", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("METHOD", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_one(*args.child)
        return
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = next((ln.split(":")[1].strip() for ln in cpuinfo if ln.startswith("model name")), "?")
    print(f"machine: {platform.node()} | {cpu} | {os.cpu_count()} cores | Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "interactions.parquet"
        t0 = time.perf_counter()
        synthesize(path, args.interactions, args.users, args.items)
        rows = pd.read_parquet(path, columns=["signal"]).shape[0]
        elapsed = time.perf_counter() - t0
        print(f"synthetic: {rows:,} interactions, {args.users:,} users, {args.items:,} items, {elapsed:.0f}s")
        methods = ["ours"] if args.skip_baseline else ["ours", "pandas-merge baseline"]
        results = []
        for method in methods:
            child = [sys.executable, __file__, "--child", method.split()[0], str(path)]
            out = (
                subprocess.run(child, check=True, capture_output=True, text=True)
                .stdout.strip()
                .splitlines()[-1]
            )
            results.append(json.loads(out))
    print(f"{'method':<14} {'pairs':>12} {'load s':>8} {'build s':>8} {'total s':>8} {'peak RSS GB':>12}")
    for r in results:
        print(
            f"{r['method']:<14} {r['pairs']:>12,} {r['load_s']:>8.1f} {r['build_s']:>8.1f} "
            f"{r['total_s']:>8.1f} {r['peak_rss_gb']:>12.2f}"
        )
    if len(results) == 2 and results[0]["pairs"] != results[1]["pairs"]:
        raise SystemExit("pair counts differ between ours and the baseline")
    ours = results[0]
    verdict = "meets" if ours["total_s"] <= 60 and ours["peak_rss_gb"] <= 4 else "MISSES"
    print(f"target ≤ 60 s and ≤ 4 GB peak: ours {verdict} it")


if __name__ == "__main__":
    main()
