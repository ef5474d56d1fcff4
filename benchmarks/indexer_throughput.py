"""Indexer throughput and freshness against the real Kafka and Redis.

    python benchmarks/indexer_throughput.py --bundle PATH --catalog DIR [--events 5000] [--batch 256]

Measures, on the same products, batch size and sequence length:
  encoder      products/s of the product tower alone (render + embed)
  pipeline     upserts/s through Kafka -> parse -> plan -> encode -> Redis + feed -> commit
  freshness    p50/p99 seconds event time -> vector in store + feed, at a fixed produce rate, and
               event time -> in the index /search answers from (the service's FeedFollower on the feed)
  backfill     products/s of `m5 index backfill`'s bulk path (into a scratch namespace)
Without --bundle it uses HashEncoder(256) and says so. Prints one JSON line per measurement.

    python benchmarks/indexer_throughput.py --bundle PATH --catalog DIR --only backfill --backfill-file BIG.jsonl

runs the encoder and the backfill only, over any products file (e.g. a 1M catalog). This VM's speed
drifts by up to 2x within minutes (the same ONNX work takes twice the CPU time), so `--chunk N`
backfills the file N products at a time and measures the encoder alone (on a sample of the same
file) before and after each chunk: each chunk's share is against the mean of its two encoder runs.
With small chunks (10k products, ~10 s each) the pooled share (all products over all backfill
seconds, against all probe texts over all probe seconds) samples the VM's swings alike for both.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson

from m5core.batching import batched
from m5core.settings import kafka_client_options


def _products(catalog: Path | None, n: int) -> list[dict]:
    if catalog is not None:
        from m5core.jsonl import read_jsonl

        out = []
        for d in read_jsonl(catalog / "products.jsonl"):
            out.append(d)
            if len(out) == n:
                break
        return out
    return [
        {
            "asin": f"B{i:09d}",
            "marketplace": "US",
            "locale": "en_US",
            "product_line": "softlines",
            "product_type": "running_shoes",
            "brand": "Acme",
            "title": f"red running shoes model {i}",
            "attributes": {"colour": "red"},
            "version": 1,
            "updated_at": 1.0,
        }
        for i in range(n)
    ]


def _cpu_split(fn, in_thread: bool = False):
    """Run fn() (on a thread of its own when in_thread: the encoder alone).

    -> (its result, wall seconds, share of all cores the encoder's threads used).

    The encoder's threads are its ONNX workers (named onnx-*), the backfill's encode worker (which
    tokenises) and any thread that is not a live Python thread afterwards (the tokenizer's pool, an
    exited worker). CPU time per product of the same ONNX work drifts up to 2x on this VM, so the
    share of the machine the encoder gets is the comparison that drift cannot move: alone it uses
    ~all of it, and every point lost is the pipeline's cost.
    """
    tick = os.sysconf("SC_CLK_TCK")

    def cpu(tid: int | str) -> float:
        try:
            f = open(f"/proc/self/task/{tid}/stat" if tid != "self" else "/proc/self/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(f[11]) + int(f[12])) / tick

    def others() -> dict[int, float]:  # live Python threads that are not the encoder's
        return {
            t.native_id: cpu(t.native_id) for t in threading.enumerate() if t.native_id is not None and not t.name.startswith(("onnx-", "encode"))
        }

    p0, th0, t0 = cpu("self"), others(), time.perf_counter()
    if in_thread:
        box = []
        worker = threading.Thread(target=lambda: box.append(fn()), name="encode-alone")
        worker.start()
        worker.join()
        result = box[0]
    else:
        result = fn()
    wall, p1, th1 = time.perf_counter() - t0, cpu("self"), others()
    python_threads = sum(c - th0.get(tid, 0.0) for tid, c in th1.items())
    return result, wall, (p1 - p0 - python_threads) / (wall * os.cpu_count())


def _pooled(probes: list[float]) -> float:
    """Encoder products/s over all probes: each encodes the same texts, so total texts / total seconds."""
    return len(probes) / sum(1 / r for r in probes)


def _products_of(path: Path, n: int) -> list[dict]:
    """n products spread evenly over a products.jsonl file."""
    with open(path, "rb") as f:
        lines = f.readlines()
    step = max(1, len(lines) // n)
    return [orjson.loads(x) for x in lines[::step][:n]]


def _events(products: list[dict], n: int, version: int) -> list[tuple[bytes, bytes]]:
    """n upserts cycling over the products with fresh content (so every one is re-embedded)."""
    out = []
    for i in range(n):
        p = dict(products[i % len(products)])
        p["version"] = version + i // len(products)
        p["title"] = f"{p['title']} rev {p['version']}"
        p["updated_at"] = time.time()
        out.append(
            (p["asin"].encode(), orjson.dumps({"op": "upsert", "asin": p["asin"], "version": p["version"], "ts": p["updated_at"], "product": p}))
        )
    return out


def _topics(bootstrap: str, partitions: int) -> tuple[str, str, str]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    tag = uuid.uuid4().hex[:8]
    names = (f"bench-changes-{tag}", f"bench-emb-{tag}", f"bench-dlq-{tag}")
    admin = KafkaAdminClient(**kafka_client_options(bootstrap))
    admin.create_topics(
        [NewTopic(names[0], partitions, 1), NewTopic(names[1], partitions, 1, topic_configs={"cleanup.policy": "compact"}), NewTopic(names[2], 1, 1)]
    )
    admin.close()
    return names


def _cleanup(bootstrap: str, topics, redis_url: str, namespaces) -> None:
    import redis
    from kafka import KafkaAdminClient

    try:
        admin = KafkaAdminClient(**kafka_client_options(bootstrap))
        admin.delete_topics(list(topics))
        admin.close()
    except Exception:  # noqa: BLE001 - best effort
        pass
    r = redis.Redis.from_url(redis_url)
    for ns in namespaces:
        for keys in batched(r.scan_iter(match=f"{ns}:*", count=5000), 5000):
            r.delete(*keys)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="model bundle dir (default: HashEncoder(256))")
    ap.add_argument("--catalog", type=Path, help="catalog dir whose products.jsonl gives realistic text")
    ap.add_argument("--events", type=int, default=5000, help="upserts for the throughput run (per round)")
    ap.add_argument("--rounds", type=int, default=1, help="throughput backlogs, each followed by an encoder probe (pooled share)")
    ap.add_argument("--batch", type=int, default=256, help="indexer max_batch = encoder batch")
    ap.add_argument("--threads", type=int, default=2, help="ONNX Runtime threads")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200.0, help="events/s for the freshness run")
    ap.add_argument("--fresh-seconds", type=float, default=15.0, help="length of the freshness run")
    ap.add_argument("--only", choices=["all", "backfill"], default="all", help="backfill: skip the pipeline and freshness runs")
    ap.add_argument("--backfill-file", type=Path, help="products.jsonl for the backfill run (default: --events products of --catalog)")
    ap.add_argument(
        "--chunk",
        type=int,
        default=0,
        help="with --backfill-file: backfill this many products at a time, measuring the encoder between chunks (0: one piece)",
    )
    ap.add_argument("--plot", type=Path, help="with --chunk: PNG of each chunk's rate against the encoder alone")
    ap.add_argument("--kafka", default=os.environ.get("M5_KAFKA_BOOTSTRAP", "127.0.0.1:9092"), help="default $M5_KAFKA_BOOTSTRAP")
    ap.add_argument("--redis", default=os.environ.get("M5_REDIS_URL", "redis://127.0.0.1:6379/0"), help="default $M5_REDIS_URL")
    args = ap.parse_args()

    from indexer import metrics as M
    from indexer.pipeline import Indexer
    from indexer.settings import IndexerSettings
    from m5core.events.kafka import KafkaAssignedSource, KafkaSink, KafkaSource
    from m5core.feed import FeedFollower
    from m5core.index import AnnIndex
    from m5core.schema import render_product
    from m5core.stores.redis import RedisStore

    if args.bundle:
        from m5core.bundle import load_manifest
        from m5core.encoder import OnnxEncoder

        manifest = load_manifest(args.bundle)
        enc, scheme = OnnxEncoder(args.bundle, "product", threads=args.threads, manifest=manifest), manifest.render_scheme
        tower = manifest.towers["product"]
        label = f"bundle {manifest.version} (dim {manifest.dim}, {tower.layers}x{tower.hidden}, max_len {tower.max_length})"
    else:
        from m5core.encoder import HashEncoder

        enc, scheme, label = HashEncoder(256), "fields", "HashEncoder(256) - no bundle given"
    print(json.dumps({"encoder": label, "threads": args.threads, "batch": args.batch}))
    products = _products(args.catalog, max(args.events, 2000))
    if args.only == "backfill" and args.backfill_file:  # time the encoder on the texts the backfill will encode
        products = _products_of(args.backfill_file, 4096)

    # 1. the encoder alone, same texts and batch sizes as the pipeline and the backfill
    texts = [render_product(p, scheme) for p in products[: min(len(products), 4096)]]
    enc.embed(texts[: args.batch])  # warm-up

    def encoder_rate(batch: int) -> float:
        t0 = time.perf_counter()
        for i in range(0, len(texts), batch):
            enc.embed(texts[i : i + batch])
        return len(texts) / (time.perf_counter() - t0)

    bf_batch = max(args.batch, 512)
    enc_rate, bf_enc_rate = encoder_rate(args.batch), encoder_rate(bf_batch)
    print(
        json.dumps(
            {
                "measure": "encoder",
                "products_per_s": round(enc_rate, 1),
                "n": len(texts),
                "batch": args.batch,
                f"products_per_s_batch_{bf_batch}": round(bf_enc_rate, 1),
            }
        )
    )

    changes, emb, dlq = _topics(args.kafka, args.partitions)
    ns = f"bench-{uuid.uuid4().hex[:8]}"
    s = IndexerSettings(
        store="redis",
        events="kafka",
        redis_url=args.redis,
        kafka_bootstrap=args.kafka,
        namespace=ns,
        changes_topic=changes,
        embeddings_topic=emb,
        dlq_topic=dlq,
        group_id=f"bench-{ns}",
        max_batch=args.batch,
        max_wait_ms=50,
        metrics_port=0,
        encode_threads=args.threads,
    )
    try:
        if args.only == "backfill":
            _backfill_run(args, products, KafkaSink(args.kafka), s, enc, scheme, ns, bf_batch, bf_enc_rate, encoder_rate)
            return
        # 2. sustained upserts/s: a backlog of events, drained by one indexer; --rounds backlogs, each
        # followed by an encoder probe, so the pooled share samples the VM's swings alike for both
        sink = KafkaSink(args.kafka, linger_ms=20)
        store = RedisStore(args.redis, ns)
        idx, probes, drained, drain_s = None, [enc_rate], 0, 0.0
        for r in range(args.rounds):
            for key, value in _events(products, args.events, 1 + r * (args.events // len(products) + 1)):  # newer versions each round
                sink.send(changes, key, value)
            sink.flush()
            done = 0
            if idx is None:
                feed = KafkaSink(args.kafka, transactional_id=f"{s.group_id}.bench")  # as `m5 index run` publishes: a transaction a batch
                idx = Indexer(s, KafkaSource(args.kafka, [changes], s.group_id), feed, store, enc, scheme)
                idx.process_with_retries(idx.source.poll(1, 5.0))  # join the group and warm up before timing
                done = 1
            n, t0 = args.events - done, time.perf_counter()
            while done < args.events:
                msgs = idx.source.poll(args.batch, 1.0)
                if not msgs:
                    continue
                idx.process_with_retries(msgs)
                done += len(msgs)
            secs = time.perf_counter() - t0
            probes.append(encoder_rate(args.batch))
            drained, drain_s = drained + n, drain_s + secs
            print(
                json.dumps(
                    {
                        "measure": "pipeline_round" if args.rounds > 1 else "pipeline",
                        "round": r,
                        "upserts_per_s": round(n / secs, 1),
                        "events": n,
                        "seconds": round(secs, 2),
                        "encoder_before": round(probes[-2], 1),
                        "encoder_after": round(probes[-1], 1),
                        "share_of_encoder": round(n / secs / ((probes[-2] + probes[-1]) / 2), 3),
                    }
                ),
                flush=True,
            )
        if args.rounds > 1:
            rate, pooled = drained / drain_s, _pooled(probes)
            print(
                json.dumps(
                    {
                        "measure": "pipeline",
                        "upserts_per_s": round(rate, 1),
                        "events": drained,
                        "rounds": args.rounds,
                        "encoder_pooled": round(pooled, 1),
                        "share_pooled": round(rate / pooled, 3),
                    }
                )
            )

        # 3. freshness at a fixed rate: event ts is set at produce time. Two clocks: the indexer's own
        # (event -> store + feed flushed) and the service's (event -> in the index /search answers from:
        # the same FeedFollower the service runs, following the feed in its own thread).
        seen: list[float] = []
        real_observe = M.FRESHNESS_SECONDS.observe
        M.FRESHNESS_SECONDS.observe = lambda v: (seen.append(v), real_observe(v))  # type: ignore[method-assign]
        idx.s = s.model_copy(update={"max_wait_ms": 20})
        searchable, pending, lock, stop = [], {}, threading.Lock(), threading.Event()
        follower = FeedFollower(KafkaAssignedSource(args.kafka, [emb]), AnnIndex(enc.dim, "flat", enc.version), store, bundle_version=enc.version)
        follower.bootstrap()  # the backlog run's vectors from the store, then the feed from its end

        def follow() -> None:
            while not stop.is_set():
                follower.poll_once(1000, 0.02)
                now = time.time()
                with lock:
                    done = [a for a, (v, _) in pending.items() if (follower.index.version_of(a) or -1) >= v]
                    searchable.extend(now - pending.pop(a)[1] for a in done)

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        runner = threading.Thread(target=idx.run, kwargs={"max_idle_s": 3.0})
        runner.start()
        n_fresh = int(args.rate * args.fresh_seconds)
        evs = _events(products, n_fresh, 1_000)
        t_start = time.perf_counter()
        for i, (key, _) in enumerate(evs):
            due = t_start + i / args.rate
            while time.perf_counter() < due:
                time.sleep(max(0.0, min(0.002, due - time.perf_counter())))
            d = orjson.loads(evs[i][1])
            d["ts"] = d["product"]["updated_at"] = time.time()
            with lock:
                pending[d["asin"]] = (d["version"], d["ts"])
            sink.send(changes, key, orjson.dumps(d))
            if i % 10 == 0:
                sink.producer.flush()
        sink.flush()
        runner.join()
        time.sleep(1.0)
        stop.set()
        watcher.join()
        follower.source.close()
        M.FRESHNESS_SECONDS.observe = real_observe  # type: ignore[method-assign]
        q = np.percentile(seen, [50, 99]) if seen else [float("nan")] * 2
        print(
            json.dumps(
                {
                    "measure": "freshness",
                    "rate_per_s": args.rate,
                    "events": n_fresh,
                    "observed": len(seen),
                    "p50_s": round(float(q[0]), 4),
                    "p99_s": round(float(q[1]), 4),
                }
            )
        )
        q = np.percentile(searchable, [50, 99, 100]) if searchable else [float("nan")] * 3
        print(
            json.dumps(
                {
                    "measure": "freshness_searchable",
                    "rate_per_s": args.rate,
                    "asins": len(searchable),
                    "never_seen": len(pending),
                    "p50_s": round(float(q[0]), 4),
                    "p99_s": round(float(q[1]), 4),
                    "max_s": round(float(q[2]), 4),
                }
            )
        )
        idx.source.close()
        idx.sink.close()

        # 4. backfill into a scratch namespace (no snapshot build, which is measured by the index benchmarks)
        _backfill_run(args, products, sink, s, enc, scheme, ns, bf_batch, bf_enc_rate, encoder_rate)
    finally:
        _cleanup(args.kafka, (changes, emb, dlq), args.redis, (ns, ns + "-bf"))


def _backfill_run(args, products, sink, s, enc, scheme, ns, bf_batch, rate_before, encoder_rate) -> None:
    """`m5 index backfill`'s bulk path into a scratch namespace, in chunks, the encoder alone between them."""
    import itertools
    import tempfile

    from indexer.backfill import backfill
    from m5core.jsonl import write_jsonl
    from m5core.stores.redis import RedisStore

    store = RedisStore(args.redis, ns + "-bf")
    probes, chunks = [rate_before], []
    with tempfile.TemporaryDirectory() as tmp, open(args.backfill_file or os.devnull, "rb") as src:
        if args.backfill_file is None:
            pieces = [products[: args.events]]
        else:
            size = args.chunk or 10**12
            pieces = iter(lambda: [orjson.loads(x) for x in itertools.islice(src, size)], [])
        for k, piece in enumerate(pieces):
            path = Path(tmp) / "products.jsonl"
            write_jsonl(path, piece)
            out, _, cpu_share = _cpu_split(lambda: backfill(path, store, sink, enc, s, scheme, batch=bf_batch))  # noqa: B023 - called here
            rate_after, _, alone_share = _cpu_split(lambda: encoder_rate(bf_batch), in_thread=True)
            probes.append(rate_after)
            out.update(
                {
                    "encoder_cpu_share": round(cpu_share, 3),
                    "encoder_cpu_share_alone": round(alone_share, 3),
                    "cpu_share_of_encoder": round(cpu_share / alone_share, 3),
                    "chunk": k,
                    "encoder_before": round(probes[-2], 1),
                    "encoder_after": round(rate_after, 1),
                    "share_of_encoder": round(out["products_per_s"] / ((probes[-2] + rate_after) / 2), 3),
                }
            )
            print(json.dumps({"measure": "backfill_chunk" if args.chunk else "backfill", **out}), flush=True)
            chunks.append(out)
    if args.chunk:
        n = max(1, sum(c["written"] for c in chunks))
        seconds = sum(c["seconds"] for c in chunks)
        rate, pooled = n / max(seconds, 1e-9), _pooled(probes)
        print(
            json.dumps(
                {
                    "measure": "backfill",
                    "written": n,
                    "invalid": sum(c["invalid"] for c in chunks),
                    "seconds": round(seconds, 1),
                    "products_per_s": round(rate, 1),
                    "encoder_pooled": round(pooled, 1),
                    "share_pooled": round(rate / pooled, 3),
                    "share_of_encoder": round(sum(c["written"] * c["share_of_encoder"] for c in chunks) / n, 3),
                    "share_min": min(c["share_of_encoder"] for c in chunks),
                    "cpu_share_of_encoder": round(sum(c["written"] * c["cpu_share_of_encoder"] for c in chunks) / n, 3),
                    "chunks": len(chunks),
                }
            )
        )
        if args.plot:
            plot_chunks(chunks, args.plot)
    sink.close()


def plot_chunks(chunks: list[dict], out: Path) -> None:
    """Backfill products/s per chunk over the run, with the encoder alone measured between chunks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = np.cumsum([c["written"] for c in chunks]) / 1000  # k products at each chunk's end
    fig, ax = plt.subplots(figsize=(9, 4.2))
    ax.plot(done, [c["products_per_s"] for c in chunks], label="backfill (store + feed)", lw=1.6)
    ax.plot(
        done,
        [(c["encoder_before"] + c["encoder_after"]) / 2 for c in chunks],
        label="encoder alone (mean of probes around the chunk)",
        lw=1.0,
        alpha=0.7,
    )
    ax.set_xlabel("products backfilled (thousands)")
    ax.set_ylabel("products/s")
    share = ax.twinx()
    share.plot(done, [c["cpu_share_of_encoder"] for c in chunks], color="tab:green", lw=0.8, alpha=0.6, label="encoder CPU share vs alone")
    share.axhline(0.9, color="tab:red", ls="--", lw=0.8)
    share.set_ylim(0.5, 1.2)
    share.set_ylabel("share (target 0.90, dashed)")
    lines = ax.get_legend_handles_labels()[0] + share.get_legend_handles_labels()[0]
    ax.legend(lines, [h.get_label() for h in lines], loc="lower left", fontsize=8)
    ax.set_title("m5 index backfill vs the encoder alone, 2-core VM")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


if __name__ == "__main__":
    main()
