"""The Grafana dashboard and the Prometheus alert rules in contrib/.

They must name only metrics the daemon exports, filter every panel by the
dashboard's job and instance, and the rules must pass ``promtool`` and fire
(or stay quiet) on made-up series. Without promtool those tests skip, except
under ``CI=true``, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from phishgate.daemon.metrics import Metrics

CONTRIB = Path(__file__).parent.parent / "contrib"
DASHBOARD = CONTRIB / "grafana" / "phishgate.json"
ALERTS = CONTRIB / "prometheus" / "phishgate-alerts.yml"
METRIC = re.compile(r"\bphishgate_\w+")
SEVERITIES = {"critical", "warning", "info"}
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
}


def exported() -> set[str]:
    """Sample names the daemon's registry can produce."""
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in SUFFIXES[family.type]
    }


def dashboard() -> Any:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[Any]:
    found = []
    for panel in dashboard()["panels"]:
        found.extend(panel.get("panels", []))
        found.append(panel)
    return found


def panel_exprs() -> list[str]:
    targets = [t["expr"] for p in panels() for t in p.get("targets", [])]
    variables = [v.get("definition", "") for v in dashboard()["templating"]["list"]]
    return targets + variables


def rules() -> list[Any]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def unknown_metrics(exprs: list[str]) -> set[str]:
    named = {name for expr in exprs for name in METRIC.findall(expr)}
    return named - exported()


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail("CI=true, so promtool may not be missing", pytrace=False)
        pytest.skip("promtool not installed (Debian package prometheus)")
    return path


def test_dashboard_has_variables_and_datasource() -> None:
    """Data source, job and instance are variables; every panel uses them."""
    names = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"datasource", "job", "instance"} <= names
    for panel in panels():
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_panel_ids_are_unique() -> None:
    """Grafana keys panels by id."""
    ids = [p["id"] for p in panels()]
    assert len(ids) == len(set(ids))


def test_dashboard_panels_do_not_overlap() -> None:
    """Each panel has grid cells of its own, within the 24 columns."""
    taken: dict[tuple[int, int], str] = {}
    for panel in panels():
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]


def test_dashboard_metrics_are_exported() -> None:
    """Every phishgate_* name in a panel or variable is one the daemon exports."""
    assert not unknown_metrics(panel_exprs())


def test_dashboard_selectors_filter_job_and_instance() -> None:
    """No panel mixes in other jobs or instances than those selected."""
    selector = re.compile(r"\b(phishgate_\w+|up)(\{[^}]*\})?")
    for expr in [t["expr"] for p in panels() for t in p.get("targets", [])]:
        for name, labels in selector.findall(expr):
            assert labels.startswith('{job=~"$job", instance=~"$instance"'), (
                name,
                expr,
            )


def test_alert_rules_say_what_to_do() -> None:
    """Each rule waits (for:), has a severity, a summary and a description."""
    for rule in rules():
        assert re.fullmatch(r"\d+[smhd]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]


def test_alert_metrics_are_exported() -> None:
    """Every phishgate_* name in a rule expression is one the daemon exports."""
    assert not unknown_metrics([rule["expr"] for rule in rules()])


def test_promtool_check_rules() -> None:
    """promtool accepts the rule file (syntax, PromQL, templates)."""
    done = subprocess.run(
        [promtool(), "check", "rules", str(ALERTS)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr


@dataclass
class Case:
    """Made-up series, and which alerts should be firing at one time."""

    what: str
    alert: str
    series: dict[str, str]
    at: str
    firing: list[dict[str, str]] = field(default_factory=list)
    interval: str = "1m"


MX = {"job": "phishgate", "instance": "mx1:9775"}
SEL = 'job="phishgate", instance="mx1:9775"'
MESSAGES = f'phishgate_messages_total{{{SEL}, front_door="milter", action="accept"}}'
REFUSED = f'phishgate_config_reloads_total{{{SEL}, result="refused"}}'
MODEL_REFUSED = f'phishgate_model_reloads_total{{{SEL}, result="refused"}}'
BUILD = f'phishgate_build_info{{{SEL}, version="0.1.0"}}'
TOTAL_BUCKET = f'phishgate_scan_duration_seconds_bucket{{{SEL}, stage="total", le='

CASES = [
    Case("down-8m", "PhishgateDown", {f"up{{{SEL}}}": "1 1 0x10"}, "10m", [MX]),
    Case("down-2m", "PhishgateDown", {f"up{{{SEL}}}": "1 0 0 1x10"}, "10m"),
    Case(
        "no-target",
        "PhishgateAbsent",
        {'up{job="other"}': "1x30"},
        "20m",
        [{"job": "phishgate"}],
    ),
    Case(
        "fail-open-10pct",
        "PhishgateFailingOpen",
        {MESSAGES: "0+60x40", f"phishgate_fail_open_total{{{SEL}}}": "0+6x40"},
        "30m",
        [MX],
    ),
    Case(
        "no-fail-open",
        "PhishgateFailingOpen",
        {MESSAGES: "0+60x40", f"phishgate_fail_open_total{{{SEL}}}": "0x40"},
        "30m",
    ),
    Case(
        "timeouts-10pct",
        "PhishgateScanErrors",
        {
            MESSAGES: "0+60x40",
            f'phishgate_errors_total{{{SEL}, reason="timeout"}}': "0+6x40",
        },
        "30m",
        [MX],
    ),
    Case(
        "only-oversized",
        "PhishgateScanErrors",
        {
            MESSAGES: "0+60x40",
            f'phishgate_errors_total{{{SEL}, reason="size"}}': "0+30x40",
        },
        "30m",
    ),
    Case(
        "p99-over-2s",
        "PhishgateScanSlow",
        {
            f'{TOTAL_BUCKET}"1"}}': "0+50x40",
            f'{TOTAL_BUCKET}"5"}}': "0+60x40",
            f'{TOTAL_BUCKET}"+Inf"}}': "0+60x40",
        },
        "30m",
        [MX],
    ),
    Case(
        "p99-under-1s",
        "PhishgateScanSlow",
        {f'{TOTAL_BUCKET}"1"}}': "0+60x40", f'{TOTAL_BUCKET}"+Inf"}}': "0+60x40"},
        "30m",
    ),
    Case(
        "psi-0.4-for-6h",
        "PhishgateScoreDrift",
        {f'phishgate_drift_psi{{{SEL}, feature="score"}}': "0.4x500"},
        "6h30m",
        [MX | {"feature": "score"}],
    ),
    Case(
        "psi-0.2",
        "PhishgateScoreDrift",
        {f'phishgate_drift_psi{{{SEL}, feature="score"}}': "0.2x500"},
        "6h30m",
    ),
    Case("no-reports-7d", "PhishgateNoReports", {BUILD: "1x200"}, "7d12h", [MX], "1h"),
    Case(
        "young-install",
        "PhishgateNoReports",
        {BUILD: "_x100 1x100"},
        "7d12h",
        interval="1h",
    ),
    Case(
        "reports-arrive",
        "PhishgateNoReports",
        {
            BUILD: "1x200",
            f'phishgate_reports_total{{{SEL}, result="accepted"}}': "0+1x200",
        },
        "7d12h",
        interval="1h",
    ),
    Case(
        "model-40-days",
        "PhishgateModelOld",
        {f"phishgate_model_created_timestamp_seconds{{{SEL}}}": "-3456000x200"},
        "2h",
        [MX],
    ),
    Case(
        "model-new",
        "PhishgateModelOld",
        {f"phishgate_model_created_timestamp_seconds{{{SEL}}}": "0x200"},
        "2h",
    ),
    Case(
        "first-refusal",
        "PhishgateConfigReloadRefused",
        {REFUSED: "_x5 1x40"},
        "10m",
        [MX | {"result": "refused"}],
    ),
    Case(
        "refusal-30m-ago", "PhishgateConfigReloadRefused", {REFUSED: "_x5 1x40"}, "40m"
    ),
    Case(
        "second-refusal",
        "PhishgateConfigReloadRefused",
        {REFUSED: "_x5 1x40 2x10"},
        "50m",
        [MX | {"result": "refused"}],
    ),
    Case("never-refused", "PhishgateConfigReloadRefused", {REFUSED: "0x40"}, "10m"),
    Case(
        "rows-dropped",
        "PhishgateVerdictLogDropping",
        {f"phishgate_verdict_log_dropped_rows_total{{{SEL}}}": "0x10 200x20"},
        "15m",
        [MX],
    ),
    Case(
        "rows-dropped-long-ago",
        "PhishgateVerdictLogDropping",
        {f"phishgate_verdict_log_dropped_rows_total{{{SEL}}}": "0x10 200x40"},
        "45m",
    ),
    Case(
        "first-model-refusal",
        "PhishgateModelReloadRefused",
        {MODEL_REFUSED: "0x5 1x40"},
        "10m",
        [MX | {"result": "refused"}],
    ),
]


def without_annotations(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A copy of the rules minus annotations, which promtool would compare."""
    document = yaml.safe_load(ALERTS.read_text())
    labels = {}
    for group in document["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations")
            labels[rule["alert"]] = rule["labels"]
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(document))
    return path, labels


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c.alert}-{c.what}")
def test_alert_fires_when_it_should(case: Case, tmp_path: Path) -> None:
    """promtool evaluates the rule over the made-up series at case.at."""
    tool = promtool()
    rules_path, labels = without_annotations(tmp_path)
    expected = [{"exp_labels": firing | labels[case.alert]} for firing in case.firing]
    test = {
        "rule_files": [rules_path.name],
        "evaluation_interval": case.interval,
        "tests": [
            {
                "interval": case.interval,
                "input_series": [
                    {"series": s, "values": v} for s, v in case.series.items()
                ],
                "alert_rule_test": [
                    {
                        "eval_time": case.at,
                        "alertname": case.alert,
                        "exp_alerts": expected,
                    }
                ],
            }
        ],
    }
    test_path = tmp_path / "test.json"
    test_path.write_text(json.dumps(test))
    done = subprocess.run(
        [tool, "test", "rules", str(test_path)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
