"""Every PromQL expression M5 ships: Grafana dashboard targets and Prometheus rule `expr`s.

Used by the parse test here and by the live-data test, so a panel or rule added later is checked
without touching the tests.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "deploy" / "grafana" / "dashboards"
RULES = REPO / "deploy" / "prometheus" / "rules"

# Grafana's built-in interval variables, as Grafana would expand them for a 1-minute panel.
_GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def _walk(node, where: str) -> Iterator[tuple[str, str]]:
    """Yield (where, expr) for every target in a dashboard, rows and nested panels included."""
    if isinstance(node, dict):
        title = node.get("title")
        here = f"{where}:{title}" if title and "targets" in node else where
        for target in node.get("targets", []) or []:
            if isinstance(target, dict) and target.get("expr"):
                yield here, target["expr"]
        for key, child in node.items():
            if key != "targets":
                yield from _walk(child, where)
    elif isinstance(node, list):
        for child in node:
            yield from _walk(child, where)


def dashboard_expressions() -> list[tuple[str, str]]:
    """(dashboard.json:panel title, expr) for every Grafana target."""
    out: list[tuple[str, str]] = []
    for f in sorted(DASHBOARDS.glob("*.json")):
        out += list(_walk(json.loads(f.read_text()), f.name))
    return out


def rule_expressions() -> list[tuple[str, str]]:
    """(rules.yml:record-or-alert name, expr) for every recording and alerting rule."""
    out: list[tuple[str, str]] = []
    for f in sorted(RULES.glob("*.yml")):
        for group in yaml.safe_load(f.read_text())["groups"]:
            for rule in group["rules"]:
                out.append((f"{f.name}:{rule.get('record') or rule.get('alert')}", rule["expr"]))
    return out


def all_expressions() -> list[tuple[str, str]]:
    return dashboard_expressions() + rule_expressions()


def expand_grafana_vars(expr: str) -> str:
    """Replace Grafana's interval variables so Prometheus can evaluate the expression."""
    for var, value in _GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    leftover = re.findall(r"\$\w+", expr)
    if leftover:
        raise ValueError(f"dashboard variable(s) {leftover} have no test substitute in promql.py: {expr}")
    return expr


def metric_names(expr: str) -> set[str]:
    """The m5_* metric names an expression reads (recording-rule names `m5:...` excluded)."""
    names = set(re.findall(r"\bm5_[a-z0-9_]+", expr))
    # histogram series resolve to their family; the family is what the code declares
    return {re.sub(r"_(bucket|count|sum)$", "", n) for n in names}
