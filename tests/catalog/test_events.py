"""Change-event streams: a realistic op mix, monotonic versions, and dead-letter payloads with their reasons."""

import subprocess
import sys
from collections import Counter

import orjson
import pytest
from pydantic import ValidationError

from catalog.events import bad_events, iter_change_events
from catalog.generate import generate_catalog
from catalog.io import load_catalog
from m5core.jsonl import read_jsonl
from m5core.schema import ChangeEvent, apply_patch, content_hash


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("evcat")
    generate_catalog(d, 300, seed=5, show_progress=False)
    return d


def test_mix_has_every_kind_of_change_and_price_patches_keep_content(small):
    products = list(load_catalog(small).products())
    docs = {p["asin"]: p for p in products}
    kinds = Counter()
    last_ts = 0.0
    for ev in iter_change_events(products, 1000, seed=2):
        assert ev.ts > last_ts
        last_ts = ev.ts
        if ev.op == "patch":
            before = docs[ev.asin]
            after = apply_patch(before, ev)
            same = content_hash(before) == content_hash(after)
            kinds["patch_price" if ev.price is not None else "patch_attr"] += 1
            if ev.price is not None:
                assert same
                assert ev.attributes is None
            docs[ev.asin] = after
        else:
            kinds[ev.op] += 1
            if ev.op == "upsert":
                docs[ev.asin] = ev.product.model_dump()
    assert all(kinds[k] > 30 for k in ("upsert", "delete", "patch_price", "patch_attr")), kinds


def test_same_seed_same_stream(small):
    products = list(load_catalog(small).products())
    a = [e.model_dump_json() for e in iter_change_events(products, 200, seed=9, start_ts=1.0)]
    b = [e.model_dump_json() for e in iter_change_events(products, 200, seed=9, start_ts=1.0)]
    assert a == b


def test_bad_events_fail_as_labelled():
    reasons = Counter()
    for key, payload, reason in bad_events():
        reasons[reason] += 1
        if reason == "malformed_json":
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(payload)
        elif reason == "schema":
            with pytest.raises(ValidationError):
                ChangeEvent.model_validate_json(payload)
        elif reason == "key_mismatch":
            assert ChangeEvent.model_validate_json(payload).asin.encode() != key
        elif reason == "oversize":  # the payload, or the key
            assert len(payload) > 512 * 1024 or len(key) > 256
    assert set(reasons) == {"malformed_json", "schema", "key_mismatch", "oversize"}


def test_events_cli_writes_valid_json_lines(small, tmp_path):
    out = tmp_path / "ev.jsonl"
    r = subprocess.run(
        [sys.executable, "-m", "m5cli", "catalog", "events", "--catalog", str(small), "--count", "50", "--out", str(out)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    events = [ChangeEvent.model_validate(d) for d in read_jsonl(out)]
    assert len(events) == 50


def test_events_cli_rejects_bad_count(small):
    r = subprocess.run([sys.executable, "-m", "m5cli", "catalog", "events", "--catalog", str(small), "--count", "0"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "--count" in r.stderr


def test_events_cli_rejects_negative_rate(small):
    r = subprocess.run([sys.executable, "-m", "m5cli", "catalog", "events", "--catalog", str(small), "--rate", "-1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "--rate" in r.stderr
