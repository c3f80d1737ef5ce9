"""deploy/: every metric the Grafana dashboard's queries and the alert rules' expressions name is one that a real
controller and a real sim agent export, read from their /metrics (after a deployment and one routed inference, so
that the lazily created series exist), not from a list written by hand."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from helpers import REPO, deployed_pool, infer, wait_for

DASHBOARD = REPO / "deploy" / "grafana" / "xpud.json"
RULES = REPO / "deploy" / "prometheus" / "xpud-alerts.yml"

# PromQL words that are not metric names: operators, modifiers and grouping keywords
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
            "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads, roughly: strings, label matchers, ranges, grouping label lists,
    Grafana variables and function names taken out, what identifiers remain."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    expr = re.sub(r"\$\{?\w+\}?", "", expr)  # Grafana variables ($__rate_interval, ${datasource})
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range and subquery durations
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)(\s*\()?", expr)
    return {word for word, call in words if not call and word.lower() not in KEYWORDS}


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target (rows' nested panels too) and every query variable."""
    board = json.loads(DASHBOARD.read_text())
    out = []
    panels = list(board["panels"])
    while panels:
        panel = panels.pop()
        panels.extend(panel.get("panels", []))
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", query)
            assert found, f"variable {var['name']}: expected label_values(METRIC, LABEL), got {query!r}"
            out.append((f"variable {var['name']}", found.group(1)))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [(f"alert {rule['alert']}", rule["expr"]) for g in groups for rule in g["rules"]]


def sample_names(text: str) -> set[str]:
    """Every sample name in Prometheus exposition text (a histogram's _bucket/_sum/_count, a counter's _total),
    and every family declared by a HELP line (a counter with no series yet, e.g. XIDs on a device that had none)."""
    names = {re.split(r"[{ ]", line, maxsplit=1)[0] for line in text.splitlines() if line and not line.startswith("#")}
    return names | set(re.findall(r"^# HELP (\S+)", text, re.MULTILINE))


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> set[str]:  # type: ignore[no-untyped-def]
    with deployed_pool(tmp_path_factory.mktemp("pool"), replicas=1) as (c, agent):
        assert infer(c.inference_url) == 0
        wait_for(lambda: "xpud_router_requests_total{" in c.scrape(), what="the router's counters")
        wait_for(lambda: "xpud_inference_queue_duration_seconds_bucket{" in agent.scrape(), what="the agent's")
        return sample_names(c.scrape()) | sample_names(agent.scrape())


def test_metric_names_are_read_from_promql() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, model) (rate(xpud_x_bucket{instance=~"$agent",a="b{c}"}'
            '[$__rate_interval]))) / on(model) group_left xpud_y > 1e3 and xpud_z offset 5m')
    assert metric_names(expr) == {"xpud_x_bucket", "xpud_y", "xpud_z"}
    assert metric_names("xpud_nodes") == {"xpud_nodes"}


def test_the_dashboard_has_the_panels_and_a_datasource_variable() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert any(v["type"] == "datasource" and v["query"] == "prometheus" for v in board["templating"]["list"])
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for word in ("nodes", "deployments", "router", "latency", "utilization", "memory", "temperature", "power",
                 "health", "xid", "throttling", "queue", "batch size"):
        assert word in titles, word
    for panel in board["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]


@pytest.mark.parametrize("source", ["dashboard", "alerts"])
def test_every_queried_metric_is_exported(exported: set[str], source: str) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_expressions()
    assert queries
    missing = {}
    for where, expr in queries:
        names = metric_names(expr)
        assert names, f"{where}: no metric name found in {expr!r}"
        unknown = names - exported
        if unknown:
            missing[where] = sorted(unknown)
    assert not missing, f"queries name metrics no xpud process exports: {missing}"
