"""docker-compose.yml is for users (no Docker here): check it against the code instead."""

import re
import shlex
import time
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


def test_the_bootstrap_job_leaves_a_catalog_a_bundle_and_a_backfill_before_the_stack_serves():
    """`docker compose up` ends with a service that answers: each m5 command of the one-shot job parses, and the
    indexer (which the service waits for) starts only after the job succeeded."""
    parser = build_parser()
    job = SERVICES["bootstrap"]
    script = " ".join(job["command"])
    steps = [shlex.split(m.group(0)) for m in re.finditer(r"m5 [^;&|}]+", script)]
    assert [step[1] for step in steps] == ["catalog", "train", "index"]
    for step in steps:
        parser.parse_args(step[1:])  # exits non-zero on an unknown subcommand or flag
    assert "--preset tiny" in script
    assert SERVICES["indexer"]["depends_on"]["bootstrap"] == {"condition": "service_completed_successfully"}
    assert SERVICES["service"]["depends_on"]["indexer"] == {"condition": "service_healthy"}
    assert {"bundles:/bundles", "catalog:/data/catalog"} <= set(job["volumes"])  # writable: it makes them
    assert job["environment"]["M5_BUNDLE"] == "/bundles/current"


def test_ports_and_env_match_the_settings_defaults():
    from indexer.settings import IndexerSettings
    from service.settings import ServiceSettings

    assert "8000:8000" in SERVICES["service"]["ports"]
    assert ServiceSettings().port == 8000
    assert IndexerSettings().metrics_port == 9108  # scraped on the stack's network (prometheus.docker.yml), not published
    env = SERVICES["service"]["environment"]
    for key in env:
        field = key.removeprefix("M5_").lower()
        assert field in ServiceSettings.model_fields or field in IndexerSettings.model_fields, key
    assert env["M5_KAFKA_BOOTSTRAP"] == "kafka://m5:${M5_KAFKA_PASSWORD:?set M5_KAFKA_PASSWORD}@kafka:9092?mechanism=PLAIN"
    assert env["M5_REDIS_URL"].endswith("@redis:6379/0")
    ienv = SERVICES["indexer"]["environment"]
    service_only = {"M5_API_KEY", "M5_SHED_WAIT_MS"}
    assert {k: v for k, v in ienv.items() if k != "M5_GROUP_INSTANCE_ID"} == {k: v for k, v in env.items() if k not in service_only}  # one block
    fields = {k.removeprefix("M5_").lower(): v for k, v in ienv.items()}
    assert IndexerSettings(**{k: v for k, v in fields.items() if k in IndexerSettings.model_fields}).group_instance_id == "indexer-0"


def test_the_compose_service_serves_a_reachable_port_only_with_a_key():
    """`m5 serve --host 0.0.0.0` refuses to start keyless; compose makes the key a required variable."""
    from service.settings import ServiceSettings, exposure_error

    env, cmd = SERVICES["service"]["environment"], SERVICES["service"]["command"]
    host = cmd[cmd.index("--host") + 1]
    assert host == "0.0.0.0"
    assert env["M5_API_KEY"].startswith("${M5_API_KEY:?")
    assert exposure_error(ServiceSettings(host=host)) is not None
    assert exposure_error(ServiceSettings(host=host, api_key="k")) is None


def _dockerfile_cmd(name: str) -> list[str]:
    import json

    (line,) = [ln for ln in (REPO / "deploy" / "docker" / name).read_text().splitlines() if ln.startswith("CMD ")]
    return json.loads(line.removeprefix("CMD "))


def test_dockerfile_cmds_are_real_m5_subcommands_and_copies_are_not_ignored():
    parser = build_parser()
    ignored = {ln.strip() for ln in (REPO / ".dockerignore").read_text().splitlines() if ln.strip() and not ln.startswith("#")}
    assert {".venv", ".cache", ".git"} <= ignored
    for f in ("service.Dockerfile", "indexer.Dockerfile", "trainer.Dockerfile"):
        cmd = _dockerfile_cmd(f)
        assert cmd[0] == "m5", f
        parser.parse_args(cmd[1:])  # exits non-zero on an unknown subcommand or flag
        text = (REPO / "deploy" / "docker" / f).read_text()
        for src in re.findall(r"^COPY (\S+)", text, flags=re.M):
            assert src not in ignored and (REPO / src).exists(), (f, src)


def test_prometheus_in_docker_scrapes_compose_services_and_loads_the_mounted_rules():
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["prometheus"]["volumes"]}
    cfg = yaml.safe_load((REPO / mounts["/etc/prometheus/prometheus.yml"]).read_text())
    targets = {job["job_name"]: job["static_configs"][0]["targets"] for job in cfg["scrape_configs"]}
    assert targets == {"m5-service": ["service:8000"], "m5-indexer": ["indexer:9108"]}
    assert cfg["rule_files"] == ["rules/*.yml"]
    assert mounts["/etc/prometheus/rules"] == "./deploy/prometheus/rules"


def test_only_the_service_and_grafana_are_published_and_every_secret_is_required():
    published = {name: svc["ports"] for name, svc in SERVICES.items() if svc.get("ports")}
    assert published == {"service": ["8000:8000"], "grafana": ["3000:3000"]}
    text = (REPO / "docker-compose.yml").read_text()
    for secret in ("M5_API_KEY", "M5_REDIS_PASSWORD", "GRAFANA_ADMIN_PASSWORD"):
        assert re.search(rf"\$\{{{secret}:\?", text), secret  # compose refuses to start without it
    assert SERVICES["grafana"]["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    redis_cmd = " ".join(SERVICES["redis"]["command"])
    assert "--requirepass" in redis_cmd
    assert "--appendfsync everysec" in redis_cmd
    for name in ("indexer", "service"):
        assert SERVICES[name]["environment"]["M5_REDIS_URL"].startswith("redis://:${M5_REDIS_PASSWORD")


def test_grafana_provisioning_points_at_mounted_dashboards_and_the_prometheus_service():
    mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    prov = REPO / mounts["/etc/grafana/provisioning"]
    (provider,) = yaml.safe_load((prov / "dashboards" / "m5.yml").read_text())["providers"]
    assert provider["options"]["path"] in mounts
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"]
    assert ds["url"] == "http://prometheus:9090"
    assert ds["isDefault"]


def test_kafka_keeps_its_log_on_the_volume_and_topics_init_makes_the_three_topics():
    kafka = SERVICES["kafka"]
    data = kafka["environment"]["KAFKA_LOG_DIRS"]
    assert any(v.endswith(":" + data) for v in kafka["volumes"])
    init = " ".join(SERVICES["topics-init"]["command"])
    for topic, parts in (("catalog.changes", 3), ("catalog.embeddings", 3), ("catalog.changes.dlq", 1)):
        assert re.search(rf"--topic {re.escape(topic)} --partitions {parts}\b", init), topic
    assert re.search(r"--topic catalog\.embeddings --partitions 3 --config cleanup\.policy=compact", init)


def image_property(env_name: str) -> str:
    """The apache/kafka image's rule for its KAFKA_* variables: drop the prefix, lower-case, `___` -> `-`,
    `__` -> `_`, `_` -> `.` (so KAFKA_LISTENER_NAME_CLIENT_PLAIN_SASL_JAAS_CONFIG is listener.name.client.plain.sasl.jaas.config)."""
    name = env_name.removeprefix("KAFKA_").lower()
    return name.replace("___", "\0").replace("__", "\1").replace("_", ".").replace("\0", "-").replace("\1", "_")


def test_compose_kafka_settings_admit_our_clients_with_the_password_and_refuse_them_without(kafka_bootstrap, tmp_path):
    """No Docker here, so the broker of the compose file is started from the jars with exactly its KAFKA_* settings
    (the image's translation above; only the host names, ports and data directory are made local), and the
    indexer's and service's own address (x-m5env M5_KAFKA_BOOTSTRAP, SASL/PLAIN) must get in; a wrong password
    must not."""
    import os
    import subprocess
    import uuid

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError

    from m5core.settings import kafka_client_options
    from tests.fixtures.services import free_port

    assert kafka_bootstrap  # the shared broker's jars are resolved
    libs = Path(os.environ.get("M5_CACHE_DIR", REPO / ".cache" / "m5")) / "kafka" / "libs"
    password = uuid.uuid4().hex

    def local(value: str) -> str:
        value = re.sub(r"\$\{M5_KAFKA_PASSWORD:\?[^}]*\}", password, str(value))
        return (
            value.replace("CLIENT://:9092", f"CLIENT://127.0.0.1:{port}")
            .replace("kafka:9092", f"127.0.0.1:{port}")
            .replace("localhost:9093", f"127.0.0.1:{ctl}")
        )

    port, ctl = free_port(), free_port()
    env = SERVICES["kafka"]["environment"]
    assert env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"] == "CONTROLLER:PLAINTEXT,CLIENT:SASL_PLAINTEXT"  # no plaintext client listener
    props = {image_property(k): local(v) for k, v in env.items() if k.startswith("KAFKA_")}
    props["log.dirs"] = str(tmp_path / "data")
    (tmp_path / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    java = ["java", "-Xmx512m", f"-Dlog4j2.configurationFile={REPO / 'deploy/local/kafka/log4j2.properties'}"]
    java += [f"-Dkafka.log.file={tmp_path / 'kafka.log'}", "-cp", f"{libs}/*"]
    cid = subprocess.run([*java, "kafka.tools.StorageTool", "random-uuid"], capture_output=True, text=True, check=True).stdout.split()[-1]
    fmt = subprocess.run(
        [*java, "kafka.tools.StorageTool", "format", "-t", cid, "-c", str(tmp_path / "server.properties")], capture_output=True, text=True
    )
    assert fmt.returncode == 0, fmt.stdout[-2000:] + fmt.stderr[-2000:]
    broker = subprocess.Popen([*java, "kafka.Kafka", str(tmp_path / "server.properties")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ours = local(COMPOSE["x-m5env"]["M5_KAFKA_BOOTSTRAP"])
        deadline, admin = time.monotonic() + 90, None
        while admin is None:
            try:
                admin = KafkaAdminClient(**kafka_client_options(ours), request_timeout_ms=5000)
            except KafkaError:
                assert time.monotonic() < deadline and broker.poll() is None, (tmp_path / "kafka.log").read_text()[-3000:]
                time.sleep(1)
        admin.create_topics([NewTopic("catalog.changes", 3, 1)])
        assert "catalog.changes" in admin.list_topics()
        admin.close()
        wrong = ours.replace(password, "not-the-password")
        with pytest.raises(KafkaError):
            KafkaAdminClient(**kafka_client_options(wrong), request_timeout_ms=5000, api_version_auto_timeout_ms=5000).list_topics()
    finally:
        broker.terminate()
        broker.wait(timeout=60)
