"""Seeded chaos on the real servers: nothing lost, stale, resurrected or frozen.

A private Kafka broker and a private Redis (`appendfsync everysec`, as production runs it), two indexers in one
group and one `m5 serve` replica, while a change stream flows: upserts, patches, deletes, relistings, duplicate
and out-of-order deliveries, and bad events of every kind. A seeded schedule of faults hits them meanwhile:
kill -9 of an indexer (and its restart), a third indexer joining and leaving (a rebalance mid-batch), Redis
kill -9 and restart, Redis restarted from an older copy of its AOF (a host crash: acknowledged writes gone), and
a service kill -9 and restart, a broker restart, and a re-embed with a switch to a second bundle and a rollback
(the indexers restarted on the active namespace's bundle, as an operator would; the service follows the pointer
by itself). When the stream has drained, an oracle computed from the events checks every
ASIN in the store, in the compacted feed read back from its topic, and in the service replica (HTTP); the DLQ
must hold every bad event with its reason and no good event.

CI runs it bounded (M5_CHAOS_SECONDS=40, seed 1). The long run: `M5_CHAOS_SECONDS=1800 M5_CHAOS_SEED=2 pytest
tests/chaos -s`; it prints its figures (events, faults of each kind, checks) as one JSON line.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import redis

from catalog.events import bad_events, iter_change_events
from catalog.io import load_catalog
from indexer.reembed import namespace_for
from m5core.bundle import load_manifest
from m5core.events.kafka import KafkaAssignedSource, KafkaSink
from m5core.feed import FeedFollower
from m5core.index import AnnIndex
from m5core.settings import kafka_client_options
from m5core.stores.redis import RedisStore
from tests.fixtures.bundle import rebadged
from tests.fixtures.services import free_port, wait_http_ok

REPO = Path(__file__).resolve().parents[2]
SECONDS = float(os.environ.get("M5_CHAOS_SECONDS", "40"))
SEED = int(os.environ.get("M5_CHAOS_SEED", "1"))
RATE = 60.0  # change events per second


class PrivateRedis:
    """A redis-server of the test's own (never the shared one): kill -9, restart, restart from an older AOF."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.data = root / "data"
        self.data.mkdir(parents=True)
        self.proc: subprocess.Popen | None = None
        self.password = secrets.token_urlsafe(16)  # behind a password, as the shared server and production are
        (root / "auth.conf").write_text(f'requirepass "{self.password}"\n')
        self.start()

    @property
    def url(self) -> str:
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = [str(self.root / "auth.conf"), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.data), "--save", ""]
        args += ["--appendonly", "yes", "--appendfsync", "everysec"]  # production's durability, not more
        self.proc = subprocess.Popen([shutil.which("redis-server"), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, password=self.password, socket_connect_timeout=0.2)
        for _ in range(200):
            try:
                if client.ping():
                    return
            except redis.RedisError:
                time.sleep(0.05)
        raise AssertionError("private redis-server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def copy_aof(self) -> Path:
        """The AOF as it is on disk now: what a host crash a moment later would leave."""
        dst = self.root / f"aof-{time.monotonic_ns()}"
        shutil.copytree(self.data / "appendonlydir", dst)
        return dst

    def restart_from(self, aof: Path | None = None) -> None:
        self.kill()
        if aof is not None:
            shutil.rmtree(self.data / "appendonlydir")
            shutil.copytree(aof, self.data / "appendonlydir")
        self.start()


class PrivateKafka:
    """A KRaft broker of the test's own, started and stopped by the project's script (on the shared broker's jars)."""

    SCRIPT = REPO / "deploy" / "local" / "services.sh"

    def __init__(self, root: Path):
        shared_libs = Path(os.environ.get("M5_CACHE_DIR", REPO / ".cache" / "m5")) / "kafka" / "libs"
        (root / "kafka").mkdir(parents=True)
        if (shared_libs / ".complete").exists():
            os.symlink(shared_libs, root / "kafka" / "libs")  # no second Maven resolve
        port = free_port()
        self.env = {**os.environ, "M5_CACHE_DIR": str(root), "M5_KAFKA_PORT": str(port), "M5_KAFKA_CONTROLLER_PORT": str(free_port())}
        try:
            self.run("start")
        except BaseException:
            subprocess.run([str(self.SCRIPT), "stop", "kafka"], env=self.env, capture_output=True, timeout=120)  # no broker left behind
            raise
        url = subprocess.run([str(self.SCRIPT), "url", "kafka"], env=self.env, capture_output=True, text=True, check=True, timeout=60)
        self.bootstrap = url.stdout.strip()  # kafka://m5:PASSWORD@127.0.0.1:PORT, its own broker's credentials

    def run(self, action: str) -> None:
        r = subprocess.run([str(self.SCRIPT), action, "kafka"], env=self.env, capture_output=True, text=True, timeout=240)
        assert r.returncode == 0, r.stderr[-2000:]

    def topics(self, *specs: tuple[str, int, bool]) -> None:
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        admin = KafkaAdminClient(**kafka_client_options(self.bootstrap))
        admin.create_topics([NewTopic(n, parts, 1, topic_configs={"cleanup.policy": "compact"} if compact else {}) for n, parts, compact in specs])
        admin.close()


class Proc:
    """A restartable `python -m ...` process with its own log."""

    def __init__(self, name: str, cmd: list[str], env: dict, logs: Path, own_env: dict | None = None):
        """`env` is shared and read at each start (the indexers' bundle follows the pointer); `own_env` is this process's."""
        self.name, self.cmd, self.env, self.own_env, self.log = name, cmd, env, own_env or {}, logs / f"{name}.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, env={**self.env, **self.own_env}, cwd=REPO, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


def change_stream(products: list[dict], count: int, rng: random.Random):
    """(key, payload, good) in delivery order, and the oracle {asin: ("live" | "deleted", version)}.

    Versions rise per ASIN in generation order; delivery adds duplicates (the same event twice), late
    older events (one sent again after newer ones) and bad events of every kind."""
    events = [
        (e.asin.encode(), e.model_dump_json(exclude_none=True).encode(), e) for e in iter_change_events(products, count, seed=rng.randrange(1 << 30))
    ]
    final = {}
    for _, _, e in events:
        final[e.asin] = ("deleted" if e.op == "delete" else "live", e.version)
    out = []
    bad = bad_events()
    for i, (key, payload, _) in enumerate(events):
        out.append((key, payload, True))
        r = rng.random()
        if r < 0.03:
            out.append((key, payload, True))  # a duplicate delivery
        elif r < 0.06 and i > 20:
            k2, p2, _ = events[rng.randrange(max(0, i - 20), i)]
            out.append((k2, p2, True))  # an older event, late
        if rng.random() < 0.01:
            k, p, _ = bad[rng.randrange(len(bad))]
            out.append((k, p, False))
    return out, final


def test_chaos_converges_to_the_oracle(unique_name, trained_bundle, test_catalog, tmp_path):
    rng = random.Random(SEED)
    products = [p for _, p in zip(range(300), load_catalog(test_catalog).products())]
    stream, final = change_stream(products, int(SECONDS * RATE), rng)
    first = [
        (p["asin"].encode(), orjson.dumps({"op": "upsert", "asin": p["asin"], "version": p["version"], "ts": time.time(), "product": p}), True)
        for p in products
    ]
    stream = first + stream
    for p in products:
        final.setdefault(p["asin"], ("live", p["version"]))

    rds = PrivateRedis(tmp_path / "redis")
    kafka = PrivateKafka(tmp_path / "kafka-cache")
    kafka_bootstrap = kafka.bootstrap
    changes, feed, dlq = unique_name("changes"), unique_name("emb"), unique_name("dlq")
    kafka.topics((changes, 3, False), (feed, 3, True), (dlq, 1, False))
    namespace, port = unique_name("ns"), free_port()
    # Two bundles side by side in one bundles dir (the service finds a namespace's bundle there by its version).
    old_bundle = Path(shutil.copytree(trained_bundle, tmp_path / "bundles" / trained_bundle.name))
    new_bundle = rebadged(old_bundle, tmp_path / "bundles")
    bundle_of = {namespace: old_bundle, namespace_for(namespace, load_manifest(new_bundle).version): new_bundle}
    env = {
        **os.environ,
        "M5_STORE": "redis",
        "M5_EVENTS": "kafka",
        "M5_REDIS_URL": rds.url,
        "M5_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "M5_NAMESPACE": namespace,
        "M5_CHANGES_TOPIC": changes,
        "M5_EMBEDDINGS_TOPIC": feed,
        "M5_DLQ_TOPIC": dlq,
        "M5_GROUP_ID": unique_name("g"),
        "M5_BUNDLE": str(old_bundle),
        "M5_MAX_BATCH": "64",
        "M5_METRICS_PORT": "0",
        "M5_ENCODE_THREADS": "1",
        "M5_SESSION_TIMEOUT_MS": "6000",
        "M5_SNAPSHOT_DIR": str(tmp_path / "snaps"),
        "M5_STORE_RETRIES": "3",
        "M5_MAX_EVENT_BYTES": "500000",  # the limit catalog.events.bad_events() sizes its oversize event against
    }
    logs = tmp_path / "logs"
    logs.mkdir()
    ienv = dict(env)  # the indexers' bundle follows the active namespace; the service keeps its first one and follows the pointer
    # One transactional id per replica, stable across its restarts (as an orchestrator's pod name is): a restarted
    # replica aborts what its killed process left open. With a random one the broker aborts it after 30 s, and until
    # then read-committed readers of the feed stop at it (a replay at the end would see a cut log).
    indexers = [Proc(f"indexer-{i}", [sys.executable, "-m", "indexer", "run"], ienv, logs, {"M5_TRANSACTIONAL_ID": f"indexer-{i}"}) for i in range(3)]
    service = Proc("service", [sys.executable, "-m", "m5cli", "serve", "--port", str(port)], env, logs)
    url = f"http://127.0.0.1:{port}"
    for p in indexers[:2]:
        p.start()
    service.start()
    faults: Counter = Counter()
    stop, round_done = threading.Event(), threading.Event()

    def produce() -> None:
        """At least once, as a catalog service would: a chunk the broker did not take (it was restarting) is sent again."""
        sink = KafkaSink(kafka_bootstrap)
        t0, chunk = time.monotonic(), []

        def flush() -> None:
            while True:
                try:
                    sink.flush(timeout_s=60)
                    return
                except Exception:  # noqa: BLE001 - a broker restart: send the chunk again once it is back
                    time.sleep(1.0)
                    for k, v in chunk:
                        sink.send(changes, k, v)

        for i, (key, payload, _) in enumerate(stream):
            sink.send(changes, key, payload)
            chunk.append((key, payload))
            if i >= len(first) and i % 50 == 0:
                flush()
                chunk = []
                time.sleep(max(0.0, t0 + (i - len(first)) / RATE - time.monotonic()))
        flush()
        sink.close()

    def chaos() -> None:
        older: Path | None = None
        # model_switch twice: a re-embed and switch, then a rollback, in every round
        kinds = ["kill_indexer", "join_leave", "redis_kill", "redis_older_aof", "service_kill", "aof_copy", "broker_restart", *["model_switch"] * 2]
        schedule: list[str] = []
        while not stop.wait(rng.uniform(1.5, 3.5)):
            if not schedule:  # every kind once per round, in a seeded order
                if faults:
                    round_done.set()
                schedule = rng.sample(kinds, len(kinds))
            fault = schedule.pop()
            if fault == "aof_copy":
                older = rds.copy_aof()
                faults[fault] += 1
            elif fault == "kill_indexer":
                victim = indexers[rng.randrange(2)]
                victim.kill()
                stop.wait(rng.uniform(0, 1.5))
                victim.start()
                faults[fault] += 1
            elif fault == "join_leave":
                indexers[2].start()
                stop.wait(rng.uniform(2, 6))
                indexers[2].stop()
                faults[fault] += 1
            elif fault == "redis_kill":
                rds.restart_from(None)
                faults[fault] += 1
            elif fault == "redis_older_aof":
                if older is None:  # take the copy now and let writes pile up on top of it
                    older = rds.copy_aof()
                    faults["aof_copy"] += 1
                    time.sleep(rng.uniform(1.0, 3.0))
                rds.restart_from(older)
                older = None
                faults[fault] += 1
            elif fault == "broker_restart":
                kafka.run("stop")
                stop.wait(rng.uniform(0, 2))
                kafka.run("start")
                faults[fault] += 1
            elif fault == "service_kill":
                service.kill()
                service.start()
                faults[fault] += 1
            elif fault == "model_switch":
                switch_model()
            for p in indexers[:2]:  # an indexer that gave up on a long outage is restarted, as an orchestrator would
                if not p.alive():
                    p.start()
                    faults["indexer_restarted_after_exit"] += 1

    def follow_pointer(after_switch: bool = False) -> None:
        """The indexers on the bundle of the namespace the pointer names, as an operator keeps them. A step that failed
        midway (Redis was down) may have moved the pointer or not, and a Redis host crash within seconds of a switch
        can take the switch back (the pointer is a write like any other)."""
        bundle = bundle_of[active_ns()]
        if str(bundle) != ienv["M5_BUNDLE"]:
            if not after_switch:
                faults["switch_lost_to_older_aof"] += 1
            ienv["M5_BUNDLE"] = str(bundle)
            for p in indexers[:2]:
                p.stop()
                p.start()

    def switch_model() -> None:
        """Re-embed into the second bundle and switch, or roll back; then the indexers on the active namespace's bundle."""
        follow_pointer()
        switched = ienv["M5_BUNDLE"] == str(new_bundle)
        cmd = ["rollback"] if switched else ["reembed", "--bundle", str(new_bundle)]
        with (logs / "model_switch.log").open("ab") as out:
            code = subprocess.run([sys.executable, "-m", "indexer", *cmd], env=ienv, cwd=REPO, stdout=out, stderr=subprocess.STDOUT).returncode
        faults[("rollback" if switched else "reembed_switch") if code == 0 else "model_switch_failed"] += 1
        follow_pointer(after_switch=True)

    def active_ns() -> str:
        while True:
            try:
                return RedisStore(rds.url, namespace).get_pointer(f"{namespace}:active") or namespace
            except redis.RedisError:
                time.sleep(0.5)

    producer, chaos_thread = threading.Thread(target=produce), threading.Thread(target=chaos)
    producer.start()
    chaos_thread.start()
    try:
        producer.join()
        round_done.wait(timeout=600)  # every fault kind at least once, however short the run
        stop.set()
        chaos_thread.join()
        for p in [*indexers[:2], service]:
            if not p.alive():
                p.start()
        follow_pointer()
        while ienv["M5_BUNDLE"] != str(new_bundle):  # end on the second bundle: its feed must hold every product, changed or not
            switch_model()
        active = active_ns()
        store = RedisStore(rds.url, active)
        asins = sorted(final)
        deadline, converged = time.monotonic() + 240, False
        while time.monotonic() < deadline and not converged:
            for p in indexers[:2]:
                if not p.alive():
                    p.start()
            try:
                got = store.versions_of(asins)
                converged = all(got[i][0] == final[a][1] and got[i][2] == (final[a][0] == "deleted") for i, a in enumerate(asins))
            except redis.RedisError:
                pass
            time.sleep(1.0)
        report = {"seed": SEED, "seconds": SECONDS, "events": len(stream), "asins": len(asins), "faults": dict(faults), "active": active}
        assert active != namespace, "the run ends on the second bundle"
        print("chaos: " + json.dumps(report))
        wrong = [(a, final[a], store.versions_of([a])[0]) for a in asins if store.versions_of([a])[0][0] != final[a][1]]
        assert converged, f"store did not converge in 240 s: {len(wrong)} wrong, e.g. {wrong[:5]}; faults {dict(faults)}"
        live = {a for a in asins if final[a][0] == "live"}
        assert {a for a in asins if store.get(a) is not None} == live

        # The compacted feed, read back from its start, rebuilds exactly the live set (a partner's view).
        index = AnnIndex(store.get(next(iter(live))).vector.shape[0], "flat")
        feed_log: dict[str, list] = {}
        replay = KafkaAssignedSource(kafka_bootstrap, [feed])
        active_version = load_manifest(bundle_of[active]).version
        follower = FeedFollower(replay, index, bundle_version=active_version)  # a partner of the active bundle
        while batch := replay.poll(5000, 1.0):
            for m in batch:
                pv, bv = (orjson.loads(m.value)["pv"], orjson.loads(m.value)["bv"]) if m.value is not None else (dict(m.headers).get("pv"), None)
                feed_log.setdefault(m.key.decode(), []).append((m.partition, m.offset, "up" if m.value else "del", pv, bv))
            follower._apply(batch)
        # A partner that keeps each key's last record (compaction's view) holds every live product in the active bundle,
        # those no change touched since the switch included (the re-embed publishes its namespace).
        other = {a: feed_log[a][-1] for a in live if feed_log[a][-1][2:] != ("up", feed_log[a][-1][3], active_version)}
        assert not other, f"feed: last record not an upsert of {active_version}: {list(other.items())[:5]}"
        odd = {a for a in asins if index.contains(a)} ^ live
        history = {a: [(json.loads(p)["op"], json.loads(p)["version"]) for k, p, good in stream if good and k == a.encode()] for a in odd}
        assert not odd, f"feed: lost or resurrected {sorted(odd)}; feed {[feed_log.get(a) for a in odd]}; events {history}"
        # The same version can be encoded twice (a write the store lost is replayed), each time in another batch,
        # and int8 dynamic quantisation scales
        # each batch on its own: the vectors agree to a cosine of ~0.9999, not bit for bit, and the store and the
        # feed may each keep either. Versions must agree exactly.
        cosines = []
        for a in live:
            rec = store.get(a)
            assert index.version_of(a) <= final[a][1] and index.version_of(a) <= rec.product_version, a
            cosines.append(float(index._index.reconstruct(index._ids[a]) @ rec.vector))
            assert cosines[-1] > 0.999, (a, cosines[-1], index.version_of(a), rec.product_version, feed_log.get(a))
        report["feed_store_min_cosine"] = round(min(cosines), 6)

        # The service replica: every live product at its version, every deleted one gone, its index the live set.
        wait_http_ok(f"{url}/readyz", service.proc, 120, service.log)
        with httpx.Client(base_url=url, timeout=10) as http:
            for a in asins:
                r = http.get(f"/asin/{a}/embedding")
                if final[a][0] == "live":
                    assert r.status_code == 200 and r.json()["product_version"] == final[a][1], (a, r.status_code, r.text[:200])
                else:
                    assert r.status_code == 404, (a, r.status_code)
            for _ in range(60):
                size = http.get("/readyz").json()["index_size"]
                if size == len(live):
                    break
                time.sleep(1)
            assert size == len(live), f"service index holds {size}, {len(live)} are live"
            for a in rng.sample(sorted(live), 40):
                hits = http.post("/search", json={"vector": store.get(a).vector.tolist(), "k": 10}).json()["hits"]
                assert a in {h["asin"] for h in hits}, a

        # Dead letters: every bad event with its reason, no good one.
        src = KafkaAssignedSource(kafka_bootstrap, [dlq])
        dead = []
        while batch := src.poll(5000, 1.0):
            dead += batch
        src.close()
        expected = {k[:256]: reason for k, _, reason in bad_events()}
        sent_bad = {k[:256] for k, _, good in stream if not good}
        got_reasons = {m.key: orjson.loads(m.value)["reason"] for m in dead}
        assert sent_bad <= set(got_reasons), f"bad events missing from the DLQ: {sent_bad - set(got_reasons)}"
        good = {m.key: orjson.loads(m.value) for m in dead if expected.get(m.key) != orjson.loads(m.value)["reason"]}
        history = {k: [(json.loads(p)["op"], json.loads(p)["version"]) for key, p, ok in stream if ok and key == k] for k in good}
        assert not good, f"good events dead-lettered: {[(k, d['reason'], d['error'], d['source']) for k, d in good.items()]}; events {history}"
        print("chaos: checked " + json.dumps({**report, "live": len(live), "dead_letters": len(dead)}))
    finally:
        stop.set()
        for p in [*indexers, service]:
            p.kill()
        rds.kill()
        kafka.run("stop")
