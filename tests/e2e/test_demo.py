"""`m5 demo`, the Quickstart's first command, from an empty workdir: catalog, tiny training (DeepSpeed
on CPU), int8 export through the parity gate, backfill, indexer and server on the embedded defaults.
It answers, follows catalog changes, and stops cleanly on Ctrl-C."""

import os
import signal
import subprocess
import sys
import time

import httpx

from tests.fixtures.services import free_port, log_tail, wait_http_ok

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_demo_from_scratch_serves_follows_changes_and_stops_cleanly(tmp_path):
    work, log = tmp_path / "demo", tmp_path / "demo.log"
    base = f"http://127.0.0.1:{free_port()}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("M5_")}  # the embedded defaults, as for a new user
    with open(log, "wb") as out:
        # its own process group, so the interrupt reaches the server and the indexer as a terminal's Ctrl-C would
        proc = subprocess.Popen(
            [sys.executable, "-m", "m5cli", "demo", "--workdir", str(work), "--port", base.rsplit(":", 1)[1]],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_http_ok(f"{base}/readyz", proc, 900, log)

        found = httpx.post(f"{base}/search", json={"query": "red running shoes", "k": 5}, timeout=10).json()
        assert len(found["hits"]) == 5
        assert found["index_size"] == 5000
        emb = httpx.get(f"{base}/asin/{found['hits'][0]['asin']}/embedding", timeout=10)
        assert emb.status_code == 200
        assert len(emb.json()["vector"]) == emb.json()["dim"] > 0
        assert emb.json()["bundle_version"] == found["bundle_version"]

        # the command the demo prints: 200 changes on the local event log, deletes among them
        subprocess.run(
            [
                sys.executable,
                "-m",
                "m5cli",
                "catalog",
                "events",
                "--catalog",
                str(work / "catalog"),
                "--count",
                "200",
                "--local-events-dir",
                str(work / "events"),
            ],
            cwd=REPO,
            env=env,
            check=True,
            capture_output=True,
        )
        deadline = time.time() + 60
        while httpx.post(f"{base}/search", json={"query": "red running shoes", "k": 1}, timeout=10).json()["index_size"] == 5000:
            assert time.time() < deadline, f"the index did not follow the change events in 60 s:\n{log_tail(log)}"
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=60)
    assert rc == 0, log_tail(log)
    text = log.read_text(errors="replace")
    assert "indexer stopped cleanly" in text
    assert "'scarlet jogging sneakers'" in text  # the demo shows a few searches with the titles they find
    shown = text.split("a few searches", 1)[1]
    assert shown.count("[en_US]") + shown.count("[de_DE]") + shown.count("[ar_AE]") >= 9
