"""`m5 serve`: flags parse into ServiceSettings and reach uvicorn workers through M5_* variables."""

import argparse
import os

from m5core.settings import settings_from_args
from service.cli import export_env, register
from service.settings import ServiceSettings


def test_serve_flags_become_worker_environment(monkeypatch):
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers())
    args = ap.parse_args(["serve", "--workers", "2", "--max-k", "50", "--api-key", "k3y", "--snapshot-dir", "/tmp/snaps"])
    s = settings_from_args(ServiceSettings, args)
    assert s.workers == 2 and s.max_k == 50 and s.api_key.get_secret_value() == "k3y"
    for name in s.model_fields:
        monkeypatch.delenv(f"M5_{name.upper()}", raising=False)
    export_env(s)
    try:
        again = ServiceSettings()  # what a worker process builds from its environment
        assert again.max_k == 50 and again.api_key.get_secret_value() == "k3y" and str(again.snapshot_dir) == "/tmp/snaps"
    finally:
        for name in s.model_fields:
            os.environ.pop(f"M5_{name.upper()}", None)
