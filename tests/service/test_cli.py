"""`m5 serve`: flags parse into ServiceSettings and reach uvicorn workers through M5_* variables."""

import argparse
import os

import pytest

from m5core.settings import settings_from_args
from service.cli import export_env, register
from service.settings import ServiceSettings


def test_serve_flags_become_worker_environment(monkeypatch):
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["serve", "--workers", "2", "--max-k", "50", "--api-key", "k3y", "--snapshot-dir", "/tmp/snaps"])
    s = settings_from_args(ServiceSettings, args)
    assert s.workers == 2
    assert s.max_k == 50
    assert s.api_key.get_secret_value() == "k3y"
    for name in s.model_fields:
        monkeypatch.delenv(f"M5_{name.upper()}", raising=False)
    export_env(s)
    try:
        again = ServiceSettings()  # what a worker process builds from its environment
        assert again.max_k == 50
        assert again.api_key.get_secret_value() == "k3y"
        assert str(again.snapshot_dir) == "/tmp/snaps"
    finally:
        for name in s.model_fields:
            os.environ.pop(f"M5_{name.upper()}", None)


def test_serving_a_reachable_address_without_a_key_is_refused(monkeypatch, capsys):
    from m5cli.main import main

    for var in ("M5_API_KEY", "M5_INSECURE", "M5_HOST"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(SystemExit) as e:
        main(["serve", "--host", "0.0.0.0", "--port", "1"])
    err = capsys.readouterr().err
    assert e.value.code == 2
    assert "--host 0.0.0.0 without --api-key" in err
    assert "--insecure" in err
    from service.settings import ServiceSettings, exposure_error

    assert exposure_error(ServiceSettings(host="0.0.0.0", insecure=True)) is None
    assert exposure_error(ServiceSettings(host="127.0.0.1")) is None
