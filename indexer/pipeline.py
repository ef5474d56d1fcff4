"""The indexer loop: poll -> parse -> plan -> encode -> store + feed -> commit.

At-least-once delivery plus idempotent, version-checked writes gives exactly-once state: offsets
are committed only after the store holds the batch and the feed has flushed it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import orjson

from indexer import metrics as M
from indexer.parse import DeadLetter, parse_event
from indexer.plan import plan_batch
from indexer.settings import IndexerSettings
from indexer.write import records_of, write_records
from m5core.encoder import SUB_BATCH, Encoder, embed_in_batches
from m5core.events.base import CommitRejected, EventSink, EventSource, Message
from m5core.feed import encode_feed_value, tombstone_headers
from m5core.schema import ChangeEvent, render_product
from m5core.stores import active_pointer
from m5core.stores.base import EmbeddingStore


class NamespaceSwitched(RuntimeError):
    """The active-namespace pointer moved away from this indexer's namespace (a re-embed's switch or a rollback)."""


class StoreRestarted(RuntimeError):
    """The store process that answered a batch's first read is not the one that took its seal."""


log = logging.getLogger(__name__)


class Indexer:
    def __init__(
        self, settings: IndexerSettings, source: EventSource, sink: EventSink, store: EmbeddingStore, encoder: Encoder, render_scheme: str = "fields"
    ):
        self.s = settings
        self.source, self.sink, self.store, self.encoder = source, sink, store, encoder
        self.scheme = render_scheme
        self.stop = threading.Event()
        self._encoding = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode")
        self._lag_at = float("-inf")
        M.BUNDLE_INFO.labels(encoder.version).set(1)
        self._to_compare: dict[tuple[str, int], int] = {}
        self._saved: dict[tuple[str, int], int] = {}  # what this member last recorded in the store, per partition
        self._member = uuid.uuid4().hex  # names this member's seal in the store
        self._checked_at = time.monotonic()
        source.on_assign(self.start_offsets)

    def start_offsets(self, partitions: list[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """Where to read newly assigned partitions from: the offsets the store recorded with its last batch.

        Normally they equal the group's commit (or are one batch behind, after a crash between the two). Behind
        it, the store came back with less than it acknowledged (a Redis host crash loses up to a second of
        an `appendfsync everysec` AOF), or it is a re-embedded namespace that starts where the copy began:
        replaying from the store's offsets writes the missing records. A partition the store holds no offsets
        for starts at its beginning: the store may have lost all of it (an AOF older than its first batch), and
        a replay of what it already holds costs a version check per event, not an encode."""
        saved = self.store.load_offsets(self.s.group_id)
        mine = {tp: saved.get(tp, 0) for tp in partitions}
        self._to_compare.update(mine)  # with the group's commit after poll() returns: no broker call inside its callback
        # What it starts from counts as saved: a store that goes back before this member's first batch (a host crash
        # right after a restart) is then found by `_store_went_back` like one that goes back between two batches.
        self._saved.update({tp: off for tp, off in mine.items() if tp in saved})
        return mine

    def _store_went_back(self, msgs: list[Message]) -> bool:
        """A store that came back with less than it acknowledged while this member kept its partitions (a Redis
        host crash and restart between two batches): its offsets are behind the ones this member saved. Seek
        those partitions back to what it holds (their beginning, if it holds none) and drop the batch in hand;
        the next polls replay the lost changes. One HGETALL per batch."""
        if not self._saved:
            return False
        held = self.store.load_offsets(self.s.group_id)
        mine = set(self.source.assignment()) | {(m.topic, m.partition) for m in msgs}  # not a partition moved away
        back = {tp for tp, saved in self._saved.items() if tp in mine and held.get(tp, -1) < saved}
        if back:
            self._replay_from_store(back, held, mine)
        return bool(back)

    def _replay_from_store(self, partitions: set[tuple[str, int]], held: dict | None = None, mine: set | None = None) -> None:
        """Seek `partitions` back to the offsets the store holds (their beginning, if it holds none)."""
        held = self.store.load_offsets(self.s.group_id) if held is None else held
        mine = set(self.source.assignment()) if mine is None else mine
        back = {tp: held.get(tp, 0) for tp in partitions if tp in mine}
        for tp, off in back.items():
            M.STORE_REPLAYS.inc()
            log.warning("%s:%d: the store holds offsets up to %d, below what this member saved: it lost writes; replaying", *tp, off)
            self._saved.pop(tp, None)
        if back:
            self.source.seek(back)

    def _report_replays(self) -> None:
        started, self._to_compare = self._to_compare, {}
        for tp, c in self.source.committed(list(started)).items():
            if c > started[tp]:
                M.STORE_REPLAYS.inc()
                log.warning(
                    "%s:%d starts at the store's offset %d, %d below the group's commit (a re-embedded namespace, or a store "
                    "that lost acknowledged writes): replaying them",
                    *tp,
                    started[tp],
                    c - started[tp],
                )

    # ------------------------------------------------------------------ loop
    def run(self, max_idle_s: float | None = None) -> None:
        """Until stop is set (SIGTERM/SIGINT), or max_idle_s without events (tests, backfills)."""
        idle_since = time.monotonic()
        while not self.stop.is_set():
            msgs = self.source.poll(self.s.max_batch, self.s.max_wait_ms / 1000)
            if self._to_compare:
                self._report_replays()
            self._report_lag()  # busy or idle: lag matters most while there is a backlog
            if not msgs:
                if time.monotonic() - self._checked_at > 5.0:  # a quiet stream still learns of a store that went back
                    self._checked_at = time.monotonic()
                    try:
                        self._store_went_back([])
                    except Exception:  # noqa: BLE001 - an unreachable store is the next batch's retry loop's business
                        log.debug("store offsets unavailable", exc_info=True)
                if max_idle_s is not None and time.monotonic() - idle_since > max_idle_s:
                    return
                continue
            idle_since = time.monotonic()
            self.process_with_retries(msgs)

    def process_with_retries(self, msgs: list[Message]) -> None:
        """A store or broker outage retries the whole batch (writes are idempotent), then gives up loudly.

        Nothing is committed until a try succeeds, so giving up (the process exits non-zero and is
        restarted) redelivers the batch: at-least-once either way.
        """
        delay = 0.2
        for attempt in range(1, self.s.store_retries + 1):
            try:
                self.process(msgs)
                return
            except NamespaceSwitched:
                raise  # not a fault to retry: this process has nothing more to write
            except CommitRejected as exc:
                # Rebalanced mid-batch: our writes are durable and idempotent; the partitions' new owner
                # replays from the last commit. Retrying the commit here could only fail again.
                log.info("commit rejected after a rebalance (%s); the new owner replays the batch", exc)
                return
            except Exception as exc:  # noqa: BLE001 - redis/kafka errors have no common base class
                if attempt == self.s.store_retries or self.stop.is_set():
                    raise
                log.warning("batch attempt %d/%d failed (%s: %s); retrying in %.1fs", attempt, self.s.store_retries, type(exc).__name__, exc, delay)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def install_signal_handlers(self) -> None:
        """SIGTERM finishes the batch in hand, commits it, and exits."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())

    def _report_lag(self, every_s: float = 1.0) -> None:
        """At most once a second: a Kafka lag reading is a broker round trip (ListOffsets)."""
        now = time.monotonic()
        if now - self._lag_at < every_s:
            return
        self._lag_at = now
        try:
            for (t, p), lag in self.source.lag().items():
                M.CONSUMER_LAG.labels(t, str(p)).set(lag)
        except Exception:  # noqa: BLE001 - metrics never stop indexing
            log.debug("lag unavailable", exc_info=True)

    # ------------------------------------------------------------------ one batch
    def process(self, msgs: list[Message]) -> None:
        instance = self.store.instance()  # before the offsets are compared: a restart after it is found at the seal
        if self._store_went_back(msgs):
            return  # the source now reads from what the store holds: the next polls replay what it lost
        offsets: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (m.topic, m.partition)
            offsets[key] = max(offsets.get(key, 0), m.offset + 1)
        self.sink.begin()
        try:
            events: list[ChangeEvent] = []
            source: dict[int, Message] = {}  # id(event) -> its message: a dead letter names the event that failed
            for m in msgs:
                parsed = parse_event(m, self.s.max_event_bytes)
                if isinstance(parsed, DeadLetter):
                    self._dead(parsed)
                else:
                    events.append(parsed)
                    source[id(parsed)] = m
                    M.EVENTS.labels(parsed.op).inc()
            if events:
                self._apply(events, msgs, source)
            # The client reconnects to a restarted store without a word: the batch's reads and writes count only if
            # one store process answered them all, from before its offsets were compared to after the seal.
            token = uuid.uuid4().hex
            if self.store.seal(self.s.group_id, self._member, token) != instance:
                raise StoreRestarted("the store restarted during the batch (its reads may miss, or its writes may have lost, acknowledged data)")
            # After a switch the feed belongs to the namespace switched to, which has published itself: a record of
            # this one committed after that (a replayed delete, an old-bundle vector) would be the key's last, wrongly.
            # The records go to the log first (the commit would flush them later, after a publish that started in
            # between): a check that passes then means they precede anything published after the switch.
            self.sink.flush()
            active = self.store.get_pointer(active_pointer(self.s)[0]) or self.s.namespace
            if active != self.store.namespace:
                raise NamespaceSwitched(
                    f"namespace {self.store.namespace} is no longer active ({active} is): this batch is aborted; "
                    "restart the indexer with the bundle of the active namespace"
                )
            # The feed's records and the offsets in one transaction (Kafka): a member the group has moved on from
            # commits neither, so its late, stale records never reach a reader.
            self.sink.commit_batch(offsets, self.source)
        except BaseException:
            self.sink.abort()
            raise
        # After the commit, and after the records on the same connection (see start_offsets): offsets saved before
        # a commit that then failed would let the partition's next owner skip a batch whose feed records were aborted.
        if not self.store.save_offsets(self.s.group_id, offsets, sealed=(self._member, token)):
            # It restarted after the seal and came back without it, so without some of the batch's writes. The
            # batch's feed records went out and will go again: read the partitions again from what it holds.
            log.warning("the store lost this batch's seal (restarted from an older AOF?): replaying from its offsets")
            self._replay_from_store(set(offsets))
            return
        self._saved.update(offsets)
        M.BATCHES.inc()

    def _apply(self, events: list[ChangeEvent], msgs: list[Message], source: dict[int, Message]) -> None:
        asins = sorted({e.asin for e in events})
        stored = dict(zip(asins, self.store.versions_of(asins)))
        patched = sorted({e.asin for e in events if e.op == "patch"})
        docs = {a: orjson.loads(d) if (d := self.store.get_doc(a)) else None for a in patched}
        plan = plan_batch(events, stored, docs)
        M.STALE.inc(len(plan.stale))
        by_asin_msg = {}
        for m in msgs:
            if m.key:
                by_asin_msg[m.key.decode("utf-8", "replace")] = m
        for e in plan.unknown:
            self._dead(DeadLetter("unknown_asin", f"patch v{e.version} for {e.asin}, which the store has never held", source[id(e)]))
        for e, why in plan.invalid:
            self._dead(DeadLetter("schema", f"patch v{e.version} for {e.asin}: {why}", source[id(e)]))
        for asin, version, tomb in plan.republish:
            if tomb:
                self.sink.send(self.s.embeddings_topic, asin.encode(), None, tombstone_headers(version))
            elif (rec := self.store.get(asin)) is not None:
                self.sink.send(self.s.embeddings_topic, asin.encode(), encode_feed_value(rec))
        for asin, version, _ in plan.delete:
            if self.store.delete(asin, version):
                self.sink.send(self.s.embeddings_topic, asin.encode(), None, tombstone_headers(version))
        for doc in plan.touch:
            self.store.touch(doc["asin"], doc["version"], orjson.dumps(doc), doc["updated_at"])
        M.SKIPPED_UNCHANGED.inc(len(plan.touch))
        if plan.embed:
            # Two chunks: the last is encoded on the worker thread while this one writes the first (ONNX
            # Runtime releases the GIL), and is small, so little is written after the encoder stops. All
            # are written before the batch's offsets are committed. The batch is ordered by text length
            # first, so each chunk pads little and its sub-batches take alike long on every thread
            # (four chunks in arrival order ran the encoder at 0.72x its speed on the whole batch).
            texts = [render_product(d, self.scheme) for d in plan.embed]
            order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
            tail = 2 * SUB_BATCH
            parts = [order[:-tail], order[-tail:]] if len(order) > 2 * tail else [order]
            chunks = [([plan.embed[i] for i in part], [texts[i] for i in part]) for part in parts]  # (docs, texts)
            job = self._encoding.submit(self._encode, *chunks[0], by_asin_msg, msgs)
            for k in range(len(chunks)):
                docs, vectors = job.result()
                if k + 1 < len(chunks):
                    job = self._encoding.submit(self._encode, *chunks[k + 1], by_asin_msg, msgs)
                if docs:
                    self._write(docs, vectors)
        now = time.time()
        for ts in plan.ts.values():
            M.FRESHNESS_SECONDS.observe(max(0.0, now - ts))
        M.STORE_SIZE.set(self.store.count())

    def _write(self, docs: list[dict], vectors: np.ndarray) -> None:
        written = write_records(self.store, self.sink, self.s.embeddings_topic, records_of(docs, vectors, self.encoder, self.scheme))
        M.WRITES.inc(sum(written))

    def _encode(self, docs: list[dict], texts: list[str], by_asin_msg, msgs) -> tuple[list[dict], np.ndarray]:
        """(the docs encoded, their (n, dim) vectors). A failure is retried with back-off (the encoder may be
        short of memory for a moment); one that outlasts the retries is bisected down to the products that
        fail on their own, each dead-lettered with its own message and error, and the rest are written."""
        delay = 0.1
        for attempt in range(1, self.s.encode_retries + 1):
            try:
                return docs, self._embed(texts)
            except Exception as exc:  # noqa: BLE001 - the encoder is a black box; retry, then bisect
                log.warning("encode attempt %d/%d of %d products failed: %s", attempt, self.s.encode_retries, len(docs), exc)
                if attempt == self.s.encode_retries:
                    if len(docs) == 1:
                        return self._encode_failed(docs, by_asin_msg, msgs, exc)
                    break
                time.sleep(delay)
                delay *= 2
        return self._halves(docs, texts, by_asin_msg, msgs)

    def _halves(self, docs: list[dict], texts: list[str], by_asin_msg, msgs) -> tuple[list[dict], np.ndarray]:
        mid = len(docs) // 2
        (d1, v1), (d2, v2) = (self._bisect(docs[lo:hi], texts[lo:hi], by_asin_msg, msgs) for lo, hi in ((0, mid), (mid, len(docs))))
        return d1 + d2, np.concatenate([v1, v2])

    def _bisect(self, docs: list[dict], texts: list[str], by_asin_msg, msgs) -> tuple[list[dict], np.ndarray]:
        """One try per part, no back-off (the whole chunk failed every retry): about 2 log2(chunk) tries per bad product."""
        try:
            return docs, self._embed(texts)
        except Exception as exc:  # noqa: BLE001
            if len(docs) == 1:
                return self._encode_failed(docs, by_asin_msg, msgs, exc)
            return self._halves(docs, texts, by_asin_msg, msgs)

    def _embed(self, texts: list[str]) -> np.ndarray:
        t0 = time.perf_counter()
        out = embed_in_batches(self.encoder, texts, self.s.max_batch)
        M.ENCODE_SECONDS.observe(time.perf_counter() - t0)
        return out

    def _encode_failed(self, docs: list[dict], by_asin_msg, msgs, exc: Exception) -> tuple[list[dict], np.ndarray]:
        for d in docs:
            msg = by_asin_msg.get(d["asin"], msgs[0])
            self._dead(DeadLetter("encode_failed", f"{d['asin']} v{d['version']}: {type(exc).__name__}: {exc}", msg))
        return [], np.zeros((0, self.encoder.dim), np.float32)

    def _dead(self, dl: DeadLetter) -> None:
        M.DEAD_LETTERS.labels(dl.reason).inc()
        log.warning("dead letter (%s) at %s:%d:%d: %s", dl.reason, dl.message.topic, dl.message.partition, dl.message.offset, dl.error[:200])
        self.sink.send(self.s.dlq_topic, dl.key(), dl.payload())
