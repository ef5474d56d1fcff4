"""docker-compose.yml is for users (no Docker here): check it against the code instead."""

import re
from pathlib import Path

import pytest
import yaml

from m5cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_every_long_running_service_has_a_healthcheck_and_deps_exist():
    for name, svc in SERVICES.items():
        if svc.get("restart") != "no":
            assert "healthcheck" in svc, name
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in SERVICES, (name, dep)
            assert cond["condition"] in ("service_healthy", "service_completed_successfully")


def test_build_contexts_dockerfiles_and_mounts_exist():
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert (REPO / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), (name, src)
            else:
                assert src in COMPOSE["volumes"], (name, src)


def test_serving_images_do_not_install_torch():
    for f in ("service.Dockerfile", "indexer.Dockerfile"):
        text = (REPO / "deploy" / "docker" / f).read_text()
        installs = " ".join(re.findall(r"pip install[^\n]*", text))
        assert installs and "torch" not in installs and "train" not in installs, f


def test_commands_are_real_m5_subcommands():
    parser = build_parser()
    for name, svc in SERVICES.items():
        cmd = svc.get("command") or []
        if isinstance(cmd, list) and cmd[:1] == ["m5"]:
            with pytest.raises(SystemExit) as e:
                parser.parse_args([*cmd[1:], "--help"])
            assert e.value.code == 0, (name, cmd)


def test_ports_and_env_match_the_settings_defaults():
    from indexer.settings import IndexerSettings
    from service.settings import ServiceSettings

    assert "8000:8000" in SERVICES["service"]["ports"] and ServiceSettings().port == 8000
    assert "9108:9108" in SERVICES["indexer"]["ports"] and IndexerSettings().metrics_port == 9108
    env = SERVICES["service"]["environment"]
    for key in env:
        field = key.removeprefix("M5_").lower()
        assert field in ServiceSettings.model_fields or field in IndexerSettings.model_fields, key
    assert env["M5_KAFKA_BOOTSTRAP"] == "kafka:9092" and env["M5_REDIS_URL"].startswith("redis://redis:6379")
