"""The alerts fire on the failures they describe and stay quiet on a healthy system (promtool's
rule unit tests in deploy/prometheus/tests/), and both Prometheus configs are valid."""

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", *args], cwd=REPO, capture_output=True, text=True, timeout=60)


def test_alert_rule_unit_tests_pass():
    tests = sorted(str(p.relative_to(REPO)) for p in (REPO / "deploy" / "prometheus" / "tests").glob("*.yml"))
    assert tests
    r = _promtool("test", "rules", *tests)
    assert r.returncode == 0, r.stdout + r.stderr


def test_docker_prometheus_config_is_valid():
    r = _promtool("check", "config", "deploy/prometheus/prometheus.docker.yml")
    assert r.returncode == 0, r.stdout + r.stderr
