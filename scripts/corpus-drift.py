#!/usr/bin/env python3
"""PSI of mail collections against a model's drift references, or one another.

    scripts/corpus-drift.py [--model DIR] [--baseline PATH] PATH...

Each PATH (anything ``phishgate scan`` reads: file, mbox, Maildir, tar.gz) is
scanned the way the daemon scans live mail: same parser, features and model.
One row per PATH gives the PSI of the phish score and of each fixed drift
feature against the model's references (``reference`` in its meta.json),
or, with ``--baseline``, against the distribution of that collection in the
model's bins. An admin can point it at a mailbox before installing, to see
how far the site's mail is from what the model was trained on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from phishgate.daemon.drift import (
    DRIFT_FEATURE_NAMES,
    SCORE,
    Reference,
    bin_shares,
    model_references,
    psi,
)
from phishgate.daemon.model import Model
from phishgate.daemon.scanner import Scanner
from phishgate.daemon.sources import iter_messages

COLUMNS = (SCORE, *DRIFT_FEATURE_NAMES)


def values_of(path: str, scanner: Scanner) -> dict[str, np.ndarray]:
    """Score and drift features of every readable message under *path*."""
    rows: list[tuple[float, ...]] = []
    for item in iter_messages(path):
        if item.raw is not None:
            result = scanner.scan(item.raw)
            rows.append((result.verdict.phish, *result.drift_values))
    table = np.array(rows, dtype=np.float64).reshape(-1, len(COLUMNS))
    return {name: table[:, i] for i, name in enumerate(COLUMNS)}


def as_reference(
    values: dict[str, np.ndarray], model: dict[str, Reference]
) -> dict[str, Reference]:
    """A collection's shares in the model's bins, to compare others with."""
    return {
        name: Reference(ref.edges, tuple(bin_shares(values[name], ref.edges)), "file")
        for name, ref in model.items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", metavar="PATH")
    parser.add_argument("--model", metavar="DIR", help="default: the bundled model")
    parser.add_argument("--baseline", metavar="PATH", help="compare with this instead")
    args = parser.parse_args()
    model = Model.load(args.model)
    scanner = Scanner(model)
    refs = model_references(model.meta)
    if args.baseline:
        refs = as_reference(values_of(args.baseline, scanner), refs)
    against = args.baseline or f"model {model.version}"
    print(f"PSI against {against}")
    print(f"{'collection':<40} {'n':>6} " + " ".join(f"{c[:10]:>10}" for c in COLUMNS))
    for path in args.paths:
        values = values_of(path, scanner)
        cells = [
            psi(refs[name].shares, bin_shares(values[name], refs[name].edges))
            for name in COLUMNS
        ]
        n = len(values[SCORE])
        row = " ".join(f"{c:>10.3f}" for c in cells)
        print(f"{Path(path).name[:40]:<40} {n:>6} {row}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
