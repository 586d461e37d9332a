"""The ``phishgate`` command.

Training commands are imported lazily: the daemon never loads the training
code (DESIGN.md's dependency rule), and ``phishgate scan`` starts faster.
Exit status: 0 success, 1 some items failed, 2 usage errors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from .config import ConfigError
from .model import Model, ModelError
from .scanner import Scanner
from .sources import iter_messages
from .verdictlog import ACTIONS

__all__ = ["main"]

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2


def _version() -> str:
    try:
        return metadata.version("phishgate")
    except metadata.PackageNotFoundError:
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="phishgate", description="Phishing filter for Postfix."
    )
    parser.add_argument(
        "--version", action="version", version=f"phishgate {_version()}"
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_serve(sub)
    _add_check_config(sub)
    _add_log(sub)
    _add_quarantine(sub)
    _add_install(sub)
    _add_drift(sub)
    _add_scan(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_probe(sub)
    _add_report(sub)
    _add_retrain(sub)
    _add_model(sub)
    return parser


def _add_config_option(p: Any) -> None:
    p.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default /etc/phishgate/phishgate.toml if it exists)",
    )


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the daemon (milter, proxy and metrics)")
    _add_config_option(p)
    p.set_defaults(func=cmd_serve)


def _add_check_config(sub: Any) -> None:
    p = sub.add_parser("check-config", help="validate a configuration file")
    p.add_argument("file", nargs="?", metavar="FILE")
    _add_config_option(p)
    p.set_defaults(func=cmd_check_config)


def _add_log(sub: Any) -> None:
    p = sub.add_parser("log", help="show recent verdicts")
    _add_config_option(p)
    p.add_argument("--since", metavar="WHEN", help="e.g. 1h, 30m, 2d, or an ISO time")
    p.add_argument("--action", choices=ACTIONS)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_log)


def _add_quarantine(sub: Any) -> None:
    p = sub.add_parser(
        "quarantine", help="list, show, release, delete, purge held mail"
    )
    common = argparse.ArgumentParser(add_help=False)
    _add_config_option(common)
    qs = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = qs.add_parser(
        "list", parents=[common], help="held messages (store and hold queue)"
    )
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q = qs.add_parser("show", parents=[common], help="headers, verdict and reasons")
    q.add_argument("ids", nargs=1, metavar="ID")
    q.add_argument("--raw", action="store_true", help="print the whole message")
    q = qs.add_parser(
        "release",
        parents=[common],
        help="deliver to the recipients; records a ham label",
    )
    q.add_argument("ids", nargs="+", metavar="ID")
    q = qs.add_parser("delete", parents=[common], help="remove for good")
    q.add_argument("ids", nargs="+", metavar="ID")
    qs.add_parser("purge", parents=[common], help="remove entries past their retention")
    q = qs.add_parser(
        "digest",
        parents=[common],
        help="mail each recipient a list of what was held for them",
    )
    q.add_argument(
        "--since", default="24h", metavar="WHEN", help="e.g. 24h (default), 7d"
    )
    q.add_argument(
        "--dry-run", action="store_true", help="print the mails instead of sending"
    )
    p.set_defaults(func=cmd_quarantine)


def _add_install(sub: Any) -> None:
    p = sub.add_parser(
        "postfix-snippet", help="print the Postfix lines for a front door"
    )
    _add_config_option(p)
    p.add_argument("--mode", choices=["milter", "content-filter"], default="milter")
    p.set_defaults(func=cmd_postfix_snippet)
    p = sub.add_parser("install-systemd", help="install unit files, config, user")
    p.add_argument(
        "--root", default="/", metavar="DIR", help="install under DIR (default /)"
    )
    p.set_defaults(func=cmd_install_systemd)


def _add_drift(sub: Any) -> None:
    p = sub.add_parser(
        "drift", help="drift of live mail against the reference; live model quality"
    )
    _add_config_option(p)
    p.add_argument(
        "--window",
        metavar="WHEN",
        help="e.g. 1d, 7d (default: [drift] window_hours)",
    )
    p.add_argument(
        "--baseline",
        action="store_true",
        help="store the window as this site's reference",
    )
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.set_defaults(func=cmd_drift)


def _add_scan(sub: Any) -> None:
    p = sub.add_parser("scan", help="score messages and print verdicts")
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="file, -, directory, Maildir, mbox[.gz], tar[.gz]",
    )
    p.add_argument(
        "--model", metavar="DIR", help="model directory (default: the bundled model)"
    )
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_scan)


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model from labelled corpora")
    p.add_argument(
        "--corpus",
        action="append",
        required=True,
        metavar="PATH:LABEL",
        help="training corpus (repeatable)",
    )
    p.add_argument(
        "--test",
        action="append",
        default=[],
        metavar="PATH:LABEL",
        help="held-out test corpus (repeatable)",
    )
    p.add_argument(
        "--out", required=True, metavar="DIR", help="model directory to write"
    )
    p.add_argument(
        "--rounds", type=int, default=250, help="boosting rounds (default 250)"
    )
    p.add_argument("--seed", type=int, default=None, help="random seed")
    p.add_argument(
        "--augment-html",
        type=float,
        default=None,
        metavar="SHARE",
        help="share of plain-text ham given an HTML twin "
        "(default: training.train.AUGMENT_HTML_SHARE)",
    )
    p.add_argument(
        "--no-threshold-folds",
        action="store_true",
        help="skip leave-one-source-out threshold selection",
    )
    p.add_argument(
        "--references-only",
        action="store_true",
        help="only recompute the drift feature references in --out's meta.json "
        "from its training corpora (the model file stays as it is)",
    )
    p.set_defaults(func=cmd_train)


def _add_evaluate(sub: Any) -> None:
    p = sub.add_parser("evaluate", help="evaluate a model on labelled corpora")
    p.add_argument(
        "--model", metavar="DIR", help="model directory (default: the bundled model)"
    )
    p.add_argument("--corpus", action="append", required=True, metavar="PATH:LABEL")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=cmd_evaluate)


def _add_probe(sub: Any) -> None:
    p = sub.add_parser(
        "probe",
        help="check that features do not reveal which corpus a message came from",
    )
    p.add_argument(
        "--corpus",
        action="append",
        required=True,
        metavar="PATH:GROUP",
        help="ham corpus and its era group (repeatable)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_probe)


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="label messages as an admin (for retraining)")
    _add_config_option(p)
    p.add_argument("--label", required=True, choices=["phish", "ham", "spam"])
    p.add_argument(
        "paths",
        nargs="+",
        metavar="FILE",
        help="file, -, directory, Maildir, mbox[.gz], tar[.gz]",
    )
    p.set_defaults(func=cmd_report)


def _add_retrain(sub: Any) -> None:
    p = sub.add_parser(
        "retrain",
        help="train on the labels, publish if not worse "
        "(exit 0 published, 3 refused, 4 too few labels)",
    )
    _add_config_option(p)
    p.add_argument(
        "--min-labels",
        type=int,
        metavar="N",
        help="new labels needed since the last published model "
        "(default [retrain] min_new_labels)",
    )
    p.add_argument(
        "--force", action="store_true", help="train even with too few new labels"
    )
    p.set_defaults(func=cmd_retrain)


def _add_model(sub: Any) -> None:
    p = sub.add_parser("model", help="list, show, activate, roll back models")
    common = argparse.ArgumentParser(add_help=False)
    _add_config_option(common)
    ms = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    q = ms.add_parser("list", parents=[common], help="versions, active one marked")
    q.add_argument("--json", action="store_true", help="one JSON object per line")
    q = ms.add_parser("show", parents=[common], help="metadata and gate figures")
    q.add_argument("version", metavar="VERSION")
    q.add_argument("--json", action="store_true", help="the whole meta.json")
    q = ms.add_parser(
        "activate", parents=[common], help="serve VERSION (checked first)"
    )
    q.add_argument("version", metavar="VERSION")
    ms.add_parser("rollback", parents=[common], help="back to the previous version")
    p.set_defaults(func=cmd_model)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print(f"phishgate: config: {exc}", file=sys.stderr)
        return EXIT_PARTIAL
    except ModelError as exc:
        print(f"phishgate: model: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:
        print(f"phishgate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def cmd_serve(args: argparse.Namespace) -> int:
    from .serve import run

    return run(args.config)


def cmd_check_config(args: argparse.Namespace) -> int:
    from .config import load_config

    path = args.file or args.config
    config = load_config(path)
    print(f"{config.source}: OK")
    return EXIT_OK


def _parse_since(text: str) -> float:
    import datetime as dt
    import re
    import time

    match = re.fullmatch(r"(\d+)([smhd])", text.strip())
    if match:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
        return time.time() - int(match.group(1)) * unit
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since: not a duration or ISO time: {text!r}") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def cmd_log(args: argparse.Namespace) -> int:
    from .config import load_config
    from .verdictlog import DB_NAME, read_verdicts

    config = load_config(args.config)
    since = _parse_since(args.since) if args.since else None
    rows = read_verdicts(config.state_dir / DB_NAME, since, args.action, args.limit)
    shown = 0
    for row in rows:
        shown += 1
        if args.json:
            row.setdefault("label", None)
            print(json.dumps(row, ensure_ascii=False))
        else:
            phish = "-" if row["phish"] is None else f"{row['phish']:.3f}"
            reasons = "; ".join(row["reasons"][:3])
            label = f" label={row['label']}" if row.get("label") else ""
            print(
                f"{row['time_iso']} {row['queue_id'] or '-'} {row['action']:<10} "
                f"phish={phish}{label} {row['message_id'] or '-'} {reasons}"
            )
    if not shown and not args.json:  # say so, on stderr: stdout stays parseable
        print(
            f"phishgate: no verdicts match in {config.state_dir / DB_NAME}",
            file=sys.stderr,
        )
    return EXIT_OK


def cmd_quarantine(args: argparse.Namespace) -> int:
    from .config import load_config
    from .quarantine_cli import quarantine_command

    config = load_config(args.config)
    if args.action == "digest":
        args.since = _parse_since(args.since)
    return quarantine_command(config, args)


def cmd_postfix_snippet(args: argparse.Namespace) -> int:
    from .config import load_config
    from .install import postfix_snippet

    config = load_config(args.config)
    print(postfix_snippet(config, args.mode), end="")
    return EXIT_OK


def cmd_install_systemd(args: argparse.Namespace) -> int:
    from .install import install_systemd, next_steps

    for line in install_systemd(Path(args.root)):
        print(line)
    print(next_steps(Path(args.root)), end="")
    return EXIT_OK


def cmd_drift(args: argparse.Namespace) -> int:
    import time

    from .config import load_config
    from .drift_cli import drift_command

    config = load_config(args.config)
    if args.baseline:  # writes the baseline into the state directory
        _as_service_user(config)
    window = time.time() - _parse_since(args.window) if args.window else None
    return drift_command(config, window, args.baseline, args.json)


def cmd_scan(args: argparse.Namespace) -> int:
    scanner = Scanner(Model.load(args.model))
    failed = 0
    for path in args.paths:
        for item in iter_messages(path):
            if item.raw is None:
                failed += 1
                _print_scan_error(
                    item.source, item.member, item.error or "unreadable", args.json
                )
                continue
            try:
                result = scanner.scan(item.raw)
            except Exception as exc:  # one bad item must not stop the scan
                logging.getLogger(__name__).debug("scan failed", exc_info=True)
                failed += 1
                _print_scan_error(
                    item.source, item.member, f"scan failed: {exc}", args.json
                )
                continue
            _print_scan(item.source, item.member, result, args.json)
    return EXIT_PARTIAL if failed else EXIT_OK


def _print_scan(source: str, member: str | None, result: Any, as_json: bool) -> None:
    verdict = result.verdict
    if as_json:
        record = {
            "source": source,
            "member": member,
            "message_id": result.message_id or None,
            "ham": round(verdict.ham, 6),
            "spam": round(verdict.spam, 6),
            "phish": round(verdict.phish, 6),
            "label": verdict.label,
            "action": result.action,
            "reasons": list(verdict.reasons),
            "model_version": verdict.model_version,
            "scan_ms": round(result.scan_s * 1000, 3),
            "limits_hit": sorted(result.limits_hit),
        }
        print(json.dumps(record, ensure_ascii=False), flush=False)
        return
    name = source if member is None else f"{source}:{member}"
    reasons = "; ".join(verdict.reasons[:3]) or "no phishing signs"
    print(
        f"{name}: {verdict.label} phish={verdict.phish:.3f} "
        f"action={result.action} - {reasons}"
    )


def _print_scan_error(
    source: str, member: str | None, error: str, as_json: bool
) -> None:
    if as_json:
        print(json.dumps({"source": source, "member": member, "error": error}))
    else:
        name = source if member is None else f"{source}:{member}"
        print(f"phishgate: {name}: {error}", file=sys.stderr)


def cmd_train(args: argparse.Namespace) -> int:
    from phishgate.training.dataset import parse_corpus_spec
    from phishgate.training.report import print_training_report
    from phishgate.training.train import (
        AUGMENT_HTML_SHARE,
        SEED,
        TrainConfig,
        refresh_feature_references,
        train_and_write,
    )

    train_specs = [parse_corpus_spec(c) for c in args.corpus]
    if args.references_only:
        meta = refresh_feature_references(train_specs, Path(args.out))
        print(f"drift feature references of {meta['version']} (bin shares):")
        for name, ref in meta["reference"]["features"].items():
            print(f"  {name}: {ref['shares']}")
        return EXIT_OK
    test_specs = [parse_corpus_spec(c) for c in args.test]
    config = TrainConfig(
        rounds=args.rounds,
        seed=SEED if args.seed is None else args.seed,
        augment_html=(
            AUGMENT_HTML_SHARE if args.augment_html is None else args.augment_html
        ),
        choose_thresholds=not args.no_threshold_folds,
    )
    meta = train_and_write(train_specs, test_specs, Path(args.out), config)
    print_training_report(meta, Path(args.out))
    return EXIT_OK


def cmd_evaluate(args: argparse.Namespace) -> int:
    from phishgate.training.dataset import parse_corpus_spec
    from phishgate.training.report import evaluate_model

    specs = [parse_corpus_spec(c) for c in args.corpus]
    return evaluate_model(Model.load(args.model), specs, as_json=args.json)


def cmd_probe(args: argparse.Namespace) -> int:
    from phishgate.training.probe import run_probe

    return run_probe(args.corpus, as_json=args.json)


def _config(args: argparse.Namespace) -> Any:
    """The configuration, or None after printing why it is unusable."""
    from .config import load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(f"phishgate: config: {exc}", file=sys.stderr)
        return None


def _as_service_user(config: Any) -> None:
    """Run on as the owner of the state directory, when root starts us there.

    ``retrain``, ``model activate|rollback`` and ``drift --baseline`` write
    model folders, the active pointer, its lock and the drift baseline under
    the state directory; written by root,
    the daemon and the retrain service (the ``phishgate`` user) could no
    longer replace them. The config is already read, so it may stay
    root-only.
    """
    from .labels import service_owner

    owner = service_owner(config.state_dir)
    if owner is None:
        return
    uid, gid = owner
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
    logging.getLogger(__name__).debug("running as uid %d, gid %d", uid, gid)


def cmd_report(args: argparse.Namespace) -> int:
    from email.parser import BytesHeaderParser
    from email.policy import compat32

    from .labels import record_label

    config = _config(args)
    if config is None:
        return EXIT_PARTIAL
    failed = 0
    for path in args.paths:
        for item in iter_messages(path):
            name = (
                item.source if item.member is None else f"{item.source}:{item.member}"
            )
            if item.raw is None:
                print(
                    f"phishgate: {name}: {item.error or 'unreadable'}", file=sys.stderr
                )
                failed += 1
                continue
            header = BytesHeaderParser(policy=compat32).parsebytes(item.raw)
            message_id = " ".join(str(header["Message-ID"] or "").split())
            record_label(config.state_dir, item.raw, args.label, "admin", message_id)
            print(f"{name}: labelled {args.label} {message_id or '(no Message-ID)'}")
    return EXIT_PARTIAL if failed else EXIT_OK


def cmd_retrain(args: argparse.Namespace) -> int:
    import sqlite3

    from phishgate.training.retrain import EXIT_ERROR, RetrainError, retrain

    config = _config(args)
    if config is None:
        return EXIT_ERROR
    _as_service_user(config)
    # The decision is the point of the run: show INFO even without -v.
    logging.getLogger("phishgate").setLevel(
        logging.DEBUG if args.verbose else logging.INFO
    )
    try:
        outcome = retrain(config, min_labels=args.min_labels, force=args.force)
    except (RetrainError, ModelError, OSError, sqlite3.Error, ValueError) as exc:
        logging.getLogger(__name__).error("retrain failed: %s", exc)
        return EXIT_ERROR
    return outcome.exit_status


def cmd_model(args: argparse.Namespace) -> int:
    from . import models_dir

    config = _config(args)
    if config is None:
        return EXIT_PARTIAL
    state_dir = config.state_dir
    if args.action in ("activate", "rollback"):
        _as_service_user(config)
    if args.action == "list":
        _print_versions(models_dir.list_versions(state_dir), args.json)
    elif args.action == "show":
        _print_meta(models_dir.show(state_dir, args.version), args.json)
    elif args.action == "activate":
        model = models_dir.activate(state_dir, args.version)
        print(f"active: {args.version} ({model.version})")
    else:
        model = models_dir.rollback(state_dir)
        print(f"active: {models_dir.active_version(state_dir)} ({model.version})")
    return EXIT_OK


def _gate_text(gate: dict[str, Any] | None) -> str:
    if not gate:
        return "-"
    held = gate.get("holdback", {}).get("candidate", {})
    canary = gate.get("canary", {}).get("candidate", {})
    return (
        f"{gate.get('decision')} holdback recall={held.get('phish_recall')} "
        f"fpr={held.get('ham_fpr')} canary recall={canary.get('phish_recall')} "
        f"fpr={canary.get('ham_fpr')}"
    )


def _print_versions(versions: list[Any], as_json: bool) -> None:
    for info in versions:
        if as_json:
            print(json.dumps(info.as_json(), ensure_ascii=False))
            continue
        mark = "*" if info.active else " "
        detail = f"error: {info.error}" if info.error else _gate_text(info.gate)
        print(f"{mark} {info.version:<36} {info.created or '-':<21} {detail}")


def _print_meta(meta: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(meta, indent=1, sort_keys=True, ensure_ascii=False))
        return
    for key in ("version", "path", "active", "created", "parent", "thresholds"):
        print(f"{key}: {meta.get(key, '-')}")
    if meta.get("gate"):
        print("gate: " + json.dumps(meta["gate"], indent=1, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
