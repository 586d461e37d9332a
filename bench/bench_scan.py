#!/usr/bin/env python3
"""Scanning speed and memory: parse, features and model, per stage, on one core.

    python bench/bench_scan.py [CORPORA_DIR] [--per-file 100] [--seed 1]
                               [--runs 3] [--model DIR]

Takes the same fixed sample as ../shared/peers/score_peers.py
(``--sample-per-file 100 --seed 1``: N messages from each corpus file, files
in name order, Python's random.sample per file), scans every message in this
one process and thread, and prints messages/s, the median and p99 CPU time
per stage, and the process RSS. Each figure is the median over ``--runs``
passes; compare with the peers' figures measured in the same sitting.
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import statistics
import sys
import time
from pathlib import Path

from phishgate.daemon.features import FeatureExtractor
from phishgate.daemon.message import parse_message
from phishgate.daemon.model import Model
from phishgate.daemon.sources import iter_messages

ONE_MB = 1024 * 1024


def load_sample(corpora: Path, per_file: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    sample: list[bytes] = []
    for path in sorted(corpora.iterdir()):
        if not path.name.startswith(("ham-", "phish-", "spam-")):
            continue
        got = [item.raw for item in iter_messages(str(path)) if item.raw is not None]
        if per_file and len(got) > per_file:
            got = [got[i] for i in sorted(rng.sample(range(len(got)), per_file))]
        sample.extend(got)
    return sample


def rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one_pass(model: Model, messages: list[bytes]) -> dict[str, list[float]]:
    extractor = FeatureExtractor()
    # As the daemon's Scanner does: no n-gram hashing unless the model uses it.
    extractor.text_hashing = model.uses_text_hashing
    stages: dict[str, list[float]] = {
        "parse": [],
        "features": [],
        "model": [],
        "total": [],
    }
    for raw in messages:
        t0 = time.thread_time()
        parsed = parse_message(raw)
        t1 = time.thread_time()
        features = extractor.extract(parsed, raw)
        t2 = time.thread_time()
        model.score([features])
        t3 = time.thread_time()
        if len(raw) < ONE_MB:
            stages["parse"].append(t1 - t0)
            stages["features"].append(t2 - t1)
            stages["model"].append(t3 - t2)
            stages["total"].append(t3 - t0)
    return stages


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpora", nargs="?", default="../shared/corpora")
    ap.add_argument("--per-file", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--model", default=None)
    args = ap.parse_args()

    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    rss_start = rss_mib()
    model = Model.load(args.model)
    rss_model = rss_mib()
    messages = load_sample(Path(args.corpora), args.per_file, args.seed)
    one_pass(model, messages[:50])  # warm caches and lazy imports

    rates, results = [], []
    for _ in range(args.runs):
        start = time.perf_counter()
        results.append(one_pass(model, messages))
        rates.append(len(messages) / (time.perf_counter() - start))
    print(
        f"model {model.version}; {len(messages)} messages "
        f"({sum(len(m) for m in messages) / ONE_MB:.1f} MiB), "
        f"{args.runs} runs, one core"
    )
    print(
        f"messages/s (median of runs): {statistics.median(rates):.0f}  runs: "
        + " ".join(f"{r:.0f}" for r in rates)
    )
    print(
        "stage      median ms   p99 ms   (CPU time, messages < 1 MB; median over runs)"
    )
    for stage in ("parse", "features", "model", "total"):
        med = statistics.median(statistics.median(r[stage]) for r in results) * 1000
        tail = statistics.median(p99(r[stage]) for r in results) * 1000
        print(f"{stage:<10} {med:9.2f} {tail:9.2f}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"RSS MiB: start {rss_start:.0f}, model loaded {rss_model:.0f}, "
        f"now {rss_mib():.0f}, peak {peak:.0f} (the sample itself is held in memory)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
