"""Shards that follow feed partitions, and `m5 router` in front of them (issue 16): real Kafka and Redis, the
trained test bundle, every server a process started as a user would (`m5 index backfill`, `m5 serve`, `m5 router`)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from m5core.jsonl import read_jsonl
from m5core.shards import format_partitions, parse_partitions, partition_of
from service.router import Upstream, merge_batch, merge_one, parse_shards
from tests.fixtures.services import free_port, wait_http_ok

REPO = Path(__file__).resolve().parents[2]
M5 = [sys.executable, "-m", "m5cli"]


def _start(args: list[str], env: dict, log: Path) -> subprocess.Popen:
    return subprocess.Popen([*M5, *args], env=env, cwd=REPO, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@pytest.fixture
def sharded(real_servers, trained_bundle, test_catalog, tmp_path):
    """The test catalog backfilled into a 3-partition feed; one whole service, shard A (partition 0), shard B
    (partitions 1-2, listed with a second replica that is down) and the router over A and B.
    -> (urls, processes, env, products)."""
    env = {**os.environ, **{f"M5_{k.upper()}": str(v) for k, v in real_servers.items()}, "M5_BUNDLE": str(trained_bundle), "M5_MODEL_POLL_S": "0"}
    env.pop("M5_SNAPSHOT_DIR", None)
    products = list(read_jsonl(test_catalog / "products.jsonl"))[:600]
    first = tmp_path / "products.jsonl"
    first.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in products))
    subprocess.run([*M5, "index", "backfill", str(first)], env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    ports = {name: free_port() for name in ("whole", "a", "b", "router")}
    urls = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    procs = {
        "whole": _start(["serve", "--port", str(ports["whole"])], env, tmp_path / "whole.log"),
        "a": _start(["serve", "--port", str(ports["a"]), "--shard-partitions", "0"], env, tmp_path / "a.log"),
        "b": _start(["serve", "--port", str(ports["b"]), "--shard-partitions", "1-2"], env, tmp_path / "b.log"),
    }
    dead = f"http://127.0.0.1:{free_port()}"  # a replica of B that is down: the router passes to the live one
    shards = f"0={urls['a']} 1-2={dead},{urls['b']}"
    procs["router"] = _start(["router", "--port", str(ports["router"]), "--shards", shards, "--deadline-ms", "2000"], env, tmp_path / "router.log")
    try:
        for name in ("whole", "a", "b"):
            wait_http_ok(urls[name] + "/readyz", procs[name], 120, tmp_path / f"{name}.log")
        wait_http_ok(urls["router"] + "/readyz", procs["router"], 60, tmp_path / "router.log")
        yield urls, procs, env, products
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
        for p in procs.values():
            p.wait(timeout=30)


def _asins(doc: dict) -> list[str]:
    return [h["asin"] for h in doc["hits"]]


def test_two_shards_and_the_router_answer_as_one_service(sharded):
    urls, _, _, products = sharded
    c = httpx.Client(timeout=10)
    a, b = (c.get(urls[s] + "/readyz").json() for s in ("a", "b"))
    whole = c.get(urls["whole"] + "/readyz").json()
    assert a["shard_partitions"] == "0" and b["shard_partitions"] == "1-2" and whole["shard_partitions"] is None
    assert a["feed_partitions"] == b["feed_partitions"] == whole["feed_partitions"] == 3
    assert a["index_size"] + b["index_size"] == whole["index_size"] == len(products)
    assert 0 < a["index_size"] < whole["index_size"]

    # Each shard holds exactly its partitions' products.
    for shard, parts in (("a", {0}), ("b", {1, 2})):
        hits = c.post(urls[shard] + "/search", json={"asin": products[0]["asin"], "k": 50}).json()["hits"]
        assert hits and all(partition_of(h["asin"], 3) in parts for h in hits)

    searches = (
        [{"asin": p["asin"], "k": 10} for p in products[:40:2]]
        + [{"query": p["title"].split(",")[0], "k": 10} for p in products[1:40:2]]
        + [{"vector": c.get(f"{urls['whole']}/asin/{p['asin']}/embedding").json()["vector"], "k": 10} for p in products[40:50]]
    )
    overlaps = []
    for body in searches:
        one = c.post(urls["whole"] + "/search", json=body)
        merged = c.post(urls["router"] + "/search", json=body)
        assert one.status_code == merged.status_code == 200, merged.text
        m = merged.json()
        assert m["partial"] is False and [s["outcome"] for s in m["shards"]] == ["ok", "ok"]
        assert m["shards"][1]["replica"] == urls["b"]
        assert m["index_size"] == one.json()["index_size"]
        overlaps.append(len(set(_asins(m)) & set(_asins(one.json()))) / 10)
        if "query" not in body:  # by vector or ASIN the shards' scores are the whole index's, to the float
            assert np.allclose([h["score"] for h in m["hits"]], [h["score"] for h in one.json()["hits"]], atol=1e-5)
    assert np.mean(overlaps) >= 0.99, overlaps

    # A batch is merged search by search; an unknown ASIN stays that item's 404.
    batch = {"searches": [searches[0], searches[25], {"asin": "B0ZZZZZZZZ", "k": 5}]}
    one, merged = c.post(urls["whole"] + "/search/batch", json=batch).json(), c.post(urls["router"] + "/search/batch", json=batch).json()
    assert [_asins(r["result"]) if r["result"] else r["error"]["status"] for r in merged["results"]] == [
        _asins(r["result"]) if r["result"] else r["error"]["status"] for r in one["results"]
    ]

    # A product's GET goes to the shard of its partition and answers as the whole service does.
    for p in products[:10]:
        r = c.get(f"{urls['router']}/asin/{p['asin']}/embedding")
        assert r.status_code == 200
        assert r.json()["vector"] == c.get(f"{urls['whole']}/asin/{p['asin']}/embedding").json()["vector"]
    assert c.get(urls["router"] + "/asin/B0ZZZZZZZZ/embedding").status_code == 404
    # Duplicates fan out like searches.
    p = products[3]
    one = c.get(f"{urls['whole']}/asin/{p['asin']}/duplicates", params={"k": 20, "threshold": 0.5}).json()
    merged = c.get(f"{urls['router']}/asin/{p['asin']}/duplicates", params={"k": 20, "threshold": 0.5}).json()
    assert [h["asin"] for h in merged["duplicates"]] == [h["asin"] for h in one["duplicates"]]
    # A bad request is the shards' 422, passed through.
    r = c.post(urls["router"] + "/search", json={"asin": products[0]["asin"], "k": 100_000})
    assert r.status_code == 422 and "k" in r.text
    metrics = c.get(urls["router"] + "/metrics").text
    assert 'm5_router_shard_answers_total{outcome="ok",shard="1-2"}' in metrics


async def test_the_routers_connections_to_a_replica_are_kept_and_renewed(sharded):
    """One connection per request in flight, reused (a new connection a request cost the shard ~1 ms a search here),
    and one the replica closed while idle (uvicorn's keep-alive timeout, 5 s) is replaced without failing a request."""
    urls, *_ = sharded
    up = Upstream(urls["a"])
    body = orjson.dumps({"query": "running shoes", "k": 3})
    first = [(await up.request("POST", "/search", body, {"content-type": "application/json"}))[0] for _ in range(3)]
    assert first == [200] * 3 and len(up.idle) == 1
    kept = up.idle[0]
    assert (await up.request("GET", "/healthz", b"", {}))[0] == 200 and up.idle == [kept]
    await asyncio.sleep(5.5)  # the replica closes the idle connection
    status, _, got = await up.request("POST", "/search", body, {"content-type": "application/json"})
    assert status == 200 and orjson.loads(got)["hits"] and up.idle and up.idle[0] is not kept
    up.close()


def test_shards_follow_their_partitions_of_the_live_feed(sharded, tmp_path):
    urls, _, env, products = sharded
    new = [{**p, "asin": "B9" + p["asin"][2:], "version": p["version"] + 1} for p in products[:30]]
    path = tmp_path / "new.jsonl"
    path.write_bytes(b"".join(orjson.dumps(p) + b"\n" for p in new))
    subprocess.run([*M5, "index", "backfill", str(path)], env=env, cwd=REPO, check=True, capture_output=True, timeout=300)
    c = httpx.Client(timeout=10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        sizes = [c.get(urls[s] + "/readyz").json()["index_size"] for s in ("whole", "a", "b")]
        if sizes[0] == len(products) + len(new) and sizes[1] + sizes[2] == sizes[0]:
            break
        time.sleep(0.2)
    assert sizes[1] + sizes[2] == sizes[0] == len(products) + len(new), sizes
    for p in new[:10]:
        body = {"asin": p["asin"], "k": 10}
        assert _asins(c.post(urls["router"] + "/search", json=body).json()) == _asins(c.post(urls["whole"] + "/search", json=body).json())


def test_a_shard_that_does_not_answer_in_time_makes_a_partial_result(sharded, tmp_path):
    urls, procs, env, products = sharded
    c = httpx.Client(timeout=10)
    body = {"asin": products[5]["asin"], "k": 10}
    procs["b"].send_signal(signal.SIGSTOP)  # hung, not gone: only the deadline can tell
    try:
        t0 = time.monotonic()
        r = c.post(urls["router"] + "/search", json=body)
        waited = time.monotonic() - t0
    finally:
        procs["b"].send_signal(signal.SIGCONT)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["partial"] is True
    assert {s["partitions"]: s["outcome"] for s in doc["shards"]} == {"0": "ok", "1-2": "timeout"}
    assert doc["hits"] and all(partition_of(h["asin"], 3) == 0 for h in doc["hits"])
    assert 1.9 < waited < 5, waited  # the router's --deadline-ms 2000, not the client's timeout
    # Gone (its port closed): the same partial answer, at once, named unreachable.
    procs["b"].terminate()
    procs["b"].wait(timeout=30)
    doc = c.post(urls["router"] + "/search", json=body).json()
    assert doc["partial"] is True and doc["shards"][1]["outcome"].startswith("unreachable")
    r = c.get(urls["router"] + "/readyz")
    assert r.status_code == 503 and r.json()["reasons"] == ["shard 1-2: no ready replica"]
    # Every shard gone: 503 with the reason, never an empty success.
    procs["a"].terminate()
    procs["a"].wait(timeout=30)
    r = c.post(urls["router"] + "/search", json=body)
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and "no shard" in r.json()["detail"]


def test_partition_lists_and_the_shard_map_refuse_what_cannot_serve():
    assert parse_partitions("0-3,6") == {0, 1, 2, 3, 6}
    assert format_partitions({0, 1, 2, 3, 6}) == "0-3,6"
    for bad in ("", "a", "3-1", "1,,2"):
        with pytest.raises(ValueError, match="partition|backwards"):
            parse_partitions(bad, "shard_partitions")
    shards = parse_shards("0-1=http://a:1,http://b:2 2=http://c:3")
    assert [s.name for s in shards] == ["0-1", "2"] and shards[0].replicas == ["http://a:1", "http://b:2"]
    assert [shards[0].order()[0] for _ in range(3)] == ["http://a:1", "http://b:2", "http://a:1"]
    with pytest.raises(ValueError, match="two shards"):
        parse_shards("0-1=http://a:1 1-2=http://b:2")
    with pytest.raises(ValueError, match="partitions 1 belong to no shard"):
        parse_shards("0=http://a:1 2=http://b:2")
    with pytest.raises(ValueError, match="not an http"):
        parse_shards("0=a:1")
    with pytest.raises(ValueError, match="PARTITIONS=URL"):
        parse_shards("0-1")


def test_merging_keeps_the_best_hits_of_every_shard():
    a = {"hits": [{"asin": "A1", "score": 0.9}, {"asin": "A2", "score": 0.5}], "k": 2, "index_size": 10}
    b = {"hits": [{"asin": "B1", "score": 0.7}], "k": 2, "index_size": 5}
    assert merge_one([a, b], "hits") == {"hits": [a["hits"][0], b["hits"][0]], "k": 2, "index_size": 15}
    miss = {"result": None, "error": {"status": 404, "detail": "x"}}
    out = merge_batch([{"results": [{"result": a, "error": None}, miss]}, {"results": [{"result": b, "error": None}, miss]}], "hits")
    assert [h["asin"] for h in out["results"][0]["result"]["hits"]] == ["A1", "B1"] and out["results"][1] == miss


def test_a_shard_asking_for_partitions_the_feed_lacks_is_refused(real_servers, kafka_bootstrap):
    from m5core.events.kafka import KafkaAssignedSource

    with pytest.raises(ValueError, match=r"has partitions 0-2, not \[5\]"):
        KafkaAssignedSource(kafka_bootstrap, [real_servers["embeddings_topic"]], frozenset({1, 5}))


def test_a_router_that_covers_fewer_partitions_than_the_feed_is_not_ready(sharded, tmp_path):
    """`--shards 0=A 1=B` over a 3-partition feed would leave partition 2's products to no shard and compute every
    GET's partition modulo 2: /readyz says so instead of serving."""
    urls, _, env, _ = sharded
    port = free_port()
    proc = _start(["router", "--port", str(port), "--shards", f"0={urls['a']} 1={urls['b']}"], env, tmp_path / "short.log")
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        assert r.status_code == 503
        assert r.json()["reasons"] == ["the shards follow a feed of 3 partitions; --shards covers 2"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
