#!/usr/bin/env python3
"""Run the dashboard's queries and the loaded alert rules against Prometheus.

    python contrib/check_dashboard.py [--prometheus http://127.0.0.1:9090]
        [--since 30m] [--var job=phishgate] [--png DIR]

Template variables are looked up (``label_values``) and set to all their
values, as Grafana's "All" does, unless ``--var NAME=REGEX`` sets them;
``$__rate_interval`` becomes ``--rate-interval``. Every panel query is then
run as an instant and a range query, and every alerting rule Prometheus has
loaded is listed with its health and state, and its expression run. A query
that returns nothing names the ``phishgate_*`` metrics Prometheus has no
series of. ``--png DIR`` draws each panel's range
results (needs matplotlib). Exit status 1 if any query or rule errors.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

DASHBOARD = Path(__file__).parent / "grafana" / "phishgate.json"
METRIC = re.compile(r"\b(?:phishgate_\w+|up)\b(?=\s*[{\[)])")
LABEL_VALUES = re.compile(r"label_values\((.*),\s*(\w+)\)")

Series = dict[str, Any]
Drawn = tuple[Any, list[tuple[Any, list[Series]]]]


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")

    def get(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as exc:  # Prometheus puts its error in the body
            body = json.load(exc)
        if body["status"] != "success":
            raise RuntimeError(body.get("error", body))
        return body["data"]

    def query(self, expr: str) -> list[Series]:
        result: list[Series] = self.get("/api/v1/query", query=expr)["result"]
        return result

    def query_range(self, expr: str, since_s: float) -> list[Series]:
        now = time.time()
        step = str(max(5, round(since_s / 300)))
        data = self.get(
            "/api/v1/query_range",
            query=expr,
            start=str(now - since_s),
            end=str(now),
            step=step,
        )
        result: list[Series] = data["result"]
        return result

    def missing_metrics(self, expr: str) -> list[str]:
        names = sorted(set(METRIC.findall(expr)))
        return [n for n in names if not self.query(f'count({{__name__="{n}"}})')]


def substitute(expr: str, variables: dict[str, str]) -> str:
    for name, value in sorted(variables.items(), key=lambda kv: -len(kv[0])):
        expr = expr.replace("${" + name + "}", value).replace("$" + name, value)
    return expr


def panels(dashboard: Any) -> Iterator[Any]:
    for panel in dashboard["panels"]:
        yield from panel.get("panels", [])
        if panel.get("targets"):
            yield panel


def legend(fmt: str, labels: dict[str, str]) -> str:
    if fmt in ("", "__auto"):
        return ",".join(f"{k}={v}" for k, v in labels.items()) or "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m[1], ""), fmt)


def report(status: str, what: str, detail: str) -> None:
    print(f"{status:<6} {what}: {detail}")


def resolve_variables(
    prom: Prometheus, dashboard: Any, given: dict[str, str]
) -> dict[str, str]:
    """Each variable as Grafana's "All" expands it: (a|b|c) of its values."""
    resolved = dict(given)
    for var in dashboard["templating"]["list"]:
        match = LABEL_VALUES.fullmatch(str(var.get("definition", "")))
        if match is None or var["name"] in given:
            continue
        selector, label = substitute(match[1], resolved), match[2]
        series = prom.get("/api/v1/series", **{"match[]": selector})
        values = sorted({s[label] for s in series if label in s})
        status = "ok" if values else "EMPTY"
        report(status, f"variable ${var['name']}", ", ".join(values))
        escaped = [re.escape(v).replace("\\", "\\\\") for v in values]
        resolved[var["name"]] = "(" + "|".join(escaped) + ")"
    return resolved


def check_panels(
    prom: Prometheus, dashboard: Any, vars_: dict[str, str], since_s: float
) -> tuple[int, list[Drawn]]:
    errors = 0
    drawn: list[Drawn] = []
    for panel in panels(dashboard):
        results = []
        for target in panel["targets"]:
            expr = substitute(target["expr"], vars_)
            what = f"panel {panel['title']!r} [{target['refId']}]"
            try:
                now = prom.query(expr)
                span = prom.query_range(expr, since_s)
            except (RuntimeError, OSError) as exc:
                errors += 1
                report("ERROR", what, str(exc))
                continue
            results.append((target, span))
            if now or span:
                report("ok", what, f"{len(now)} series now, {len(span)} in range")
            else:
                report("EMPTY", what, why_empty(prom, expr))
        drawn.append((panel, results))
    return errors, drawn


def why_empty(prom: Prometheus, expr: str) -> str:
    missing = prom.missing_metrics(expr)
    if missing:
        return "no series of " + ", ".join(missing)
    return "metrics present, condition not met"


def check_alerts(prom: Prometheus) -> int:
    errors = 0
    for group in prom.get("/api/v1/rules", type="alert")["groups"]:
        for rule in group["rules"]:
            what = f"alert {rule['name']}"
            if rule["health"] == "err":
                errors += 1
                report("ERROR", what, rule.get("lastError", ""))
                continue
            firing = len(prom.query(rule["query"]))
            detail = f"state {rule['state']}, {firing} series now"
            if not firing:
                detail += f"; {why_empty(prom, rule['query'])}"
            report("ok", what, detail)
    return errors


def minutes_ago(series: Series) -> list[float]:
    now = time.time()
    return [(float(at) - now) / 60 for at, _ in series["values"]]


def values(series: Series) -> list[float]:
    return [float(value) for _, value in series["values"]]


def right_axis_refs(panel: Any) -> set[str]:
    return {
        override["matcher"]["options"]
        for override in panel["fieldConfig"]["overrides"]
        if {"id": "custom.axisPlacement", "value": "right"} in override["properties"]
    }


def draw_heatmap(ax: Any, series: list[Series]) -> None:
    """Per-bucket counts from cumulative ``le`` buckets, as Grafana shows them."""
    rows = sorted(series, key=lambda s: float(s["metric"]["le"]))
    width = min(len(s["values"]) for s in rows)
    cumulative = np.array([values(s)[:width] for s in rows])
    counts = np.diff(cumulative, axis=0, prepend=0)
    x = minutes_ago(rows[0])[:width]
    ax.pcolormesh(x, range(len(rows)), counts, shading="nearest", cmap="Oranges")
    ax.set_yticks(range(len(rows)), [s["metric"]["le"] for s in rows], fontsize=7)
    ax.set_ylabel("le")


def draw_panel(plt: Any, panel: Any, results: list[tuple[Any, list[Series]]]) -> Any:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    right = right_axis_refs(panel)
    twin = ax.twinx() if right else None
    for target, series in results:
        if target.get("format") == "heatmap" and series:
            draw_heatmap(ax, series)
            continue
        on_right = target["refId"] in right
        for s in series:
            label = legend(target["legendFormat"], s["metric"])
            style = {"color": "gray", "linestyle": "--"} if on_right else {}
            (twin if on_right else ax).plot(
                minutes_ago(s), values(s), label=label, **style
            )
    defaults = panel["fieldConfig"]["defaults"]
    if defaults.get("custom", {}).get("scaleDistribution", {}).get("type") == "log":
        ax.set_yscale("log")
    ax.set_ylabel(defaults.get("unit", ""))
    ax.set_title(panel["title"])
    ax.set_xlabel("minutes ago")
    lines = [line for a in (ax, twin) if a for line in a.lines]
    if lines:
        ax.legend(lines, [line.get_label() for line in lines], fontsize=7, ncol=2)
    elif not ax.collections:
        ax.text(0.5, 0.5, "no data", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    return fig


def draw(drawn: list[Drawn], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    for panel, results in drawn:
        fig = draw_panel(plt, panel, results)
        name = re.sub(r"\W+", "-", panel["title"].lower()).strip("-")
        fig.savefig(out / f"{panel['id']:02d}-{name}.png", dpi=80)
        plt.close(fig)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--since", default="30m", help="range queries: 30m, 2h, 1d")
    parser.add_argument("--rate-interval", default="1m")
    parser.add_argument("--var", action="append", default=[], metavar="NAME=REGEX")
    parser.add_argument("--png", type=Path, metavar="DIR")
    args = parser.parse_args()
    units = {"m": 60, "h": 3600, "d": 86400}
    args.since_s = float(args.since[:-1]) * units[args.since[-1]]
    return args


def main() -> int:
    args = parse_args()
    prom = Prometheus(args.prometheus)
    dashboard = json.loads(args.dashboard.read_text())
    given = dict(v.split("=", 1) for v in args.var)
    given["__rate_interval"] = args.rate_interval

    vars_ = resolve_variables(prom, dashboard, given)
    errors, drawn = check_panels(prom, dashboard, vars_, args.since_s)
    errors += check_alerts(prom)

    if args.png:
        draw(drawn, args.png)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
