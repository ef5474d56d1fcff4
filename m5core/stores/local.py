"""Embedded embedding store on sqlite: the demo's stand-in for Redis, with the same semantics.

WAL mode lets the indexer process write while the service process reads; the version check sits
in the upsert's WHERE clause, so a write is atomic and order-safe as in the Redis store.
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from m5core.events.base import TopicPartition, offsets_from_meta, offsets_to_meta
from m5core.stores.base import EmbeddingStore, VectorRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
  ns TEXT NOT NULL, asin TEXT NOT NULL, pv INTEGER NOT NULL, vec BLOB, bv TEXT, h TEXT,
  loc TEXT, pl TEXT, ts REAL, doc BLOB, del INTEGER NOT NULL DEFAULT 0, lex BLOB,
  PRIMARY KEY (ns, asin)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS pointers (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (ns TEXT NOT NULL, grp TEXT NOT NULL, tp TEXT NOT NULL, next INTEGER NOT NULL, PRIMARY KEY (ns, grp, tp));
"""
_COLS = "vec, pv, bv, h, loc, pl, ts, del"


class LocalStore(EmbeddingStore):
    def __init__(self, path: Path | str, namespace: str = "m5"):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.namespace = namespace
        self._lock = threading.Lock()
        self._instance = uuid.uuid4().hex
        self._seals: dict[tuple[str, str], str] = {}
        self.db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        if "lex" not in {row[1] for row in self.db.execute("PRAGMA table_info(vectors)")}:  # a store written before exact terms
            self.db.execute("ALTER TABLE vectors ADD COLUMN lex BLOB")

    def put(self, records: Sequence[VectorRecord]) -> list[bool]:
        out = []
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                for r in records:
                    cur = self.db.execute(
                        """INSERT INTO vectors (ns, asin, pv, vec, bv, h, loc, pl, ts, doc, lex, del)
                           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)
                           ON CONFLICT (ns, asin) DO UPDATE SET pv=excluded.pv, vec=excluded.vec, bv=excluded.bv,
                             h=excluded.h, loc=excluded.loc, pl=excluded.pl, ts=excluded.ts, doc=excluded.doc, lex=excluded.lex, del=0
                           WHERE excluded.pv > vectors.pv""",
                        (
                            self.namespace,
                            r.asin,
                            r.product_version,
                            np.ascontiguousarray(r.vector, dtype="<f4").tobytes(),
                            r.bundle_version,
                            r.content_hash,
                            r.locale,
                            r.product_line,
                            r.updated_at,
                            r.doc,
                            r.lex,
                        ),
                    )
                    out.append(cur.rowcount == 1)
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return out

    def touch(self, asin: str, product_version: int, doc: bytes, updated_at: float) -> bool:
        with self._lock:
            cur = self.db.execute(
                "UPDATE vectors SET pv=?, doc=?, ts=? WHERE ns=? AND asin=? AND del=0 AND pv<?",
                (product_version, doc, updated_at, self.namespace, asin, product_version),
            )
            return cur.rowcount == 1

    def delete(self, asin: str, product_version: int) -> bool:
        with self._lock:
            cur = self.db.execute(
                """INSERT INTO vectors (ns, asin, pv, del) VALUES (?, ?, ?, 1)
                   ON CONFLICT (ns, asin) DO UPDATE SET pv=excluded.pv, del=1, vec=NULL, doc=NULL, h=NULL, lex=NULL
                   WHERE excluded.pv > vectors.pv""",
                (self.namespace, asin, product_version),
            )
            return cur.rowcount == 1

    def _decode(self, asin: str, row) -> VectorRecord | None:
        if row is None or row[7] or row[0] is None:
            return None
        vec, pv, bv, h, loc, pl, ts, _ = row
        return VectorRecord(asin, np.frombuffer(vec, dtype="<f4"), pv, bv, h, loc, pl, ts)

    def get(self, asin: str) -> VectorRecord | None:
        with self._lock:
            row = self.db.execute(f"SELECT {_COLS} FROM vectors WHERE ns=? AND asin=?", (self.namespace, asin)).fetchone()
        return self._decode(asin, row)

    def get_many(self, asins: Sequence[str]) -> list[VectorRecord | None]:
        return [self.get(a) for a in asins]

    def get_terms(self, asins: Sequence[str]) -> list[bytes | None]:
        out: list[bytes | None] = []
        with self._lock:
            for a in asins:
                row = self.db.execute("SELECT lex, del FROM vectors WHERE ns=? AND asin=?", (self.namespace, a)).fetchone()
                out.append(bytes(row[0]) if row is not None and not row[1] and row[0] else None)
        return out

    def get_doc(self, asin: str) -> bytes | None:
        with self._lock:
            row = self.db.execute("SELECT doc, del FROM vectors WHERE ns=? AND asin=?", (self.namespace, asin)).fetchone()
        return None if row is None or row[1] else row[0]

    def version_of(self, asin: str) -> int | None:
        return self.versions_of([asin])[0][0]

    def versions_of(self, asins: Sequence[str]) -> list[tuple[int | None, str | None, bool]]:
        out = []
        with self._lock:
            for a in asins:
                row = self.db.execute("SELECT pv, h, del FROM vectors WHERE ns=? AND asin=?", (self.namespace, a)).fetchone()
                out.append((None, None, False) if row is None else (row[0], row[1], bool(row[2])))
        return out

    def scan(self, batch: int = 1000) -> Iterator[VectorRecord]:
        last = ""
        while True:
            with self._lock:
                rows = self.db.execute(
                    f"SELECT asin, {_COLS} FROM vectors WHERE ns=? AND asin>? AND del=0 ORDER BY asin LIMIT ?",
                    (self.namespace, last, batch),
                ).fetchall()
            if not rows:
                return
            for r in rows:
                rec = self._decode(r[0], r[1:])
                if rec is not None:
                    yield rec
            last = rows[-1][0]

    def count(self) -> int:
        with self._lock:
            return self.db.execute("SELECT COUNT(*) FROM vectors WHERE ns=? AND del=0", (self.namespace,)).fetchone()[0]

    def iter_docs(self, batch: int = 1000) -> Iterator[tuple[str, bytes]]:
        last = ""
        while True:
            with self._lock:
                rows = self.db.execute(
                    "SELECT asin, doc FROM vectors WHERE ns=? AND asin>? AND del=0 ORDER BY asin LIMIT ?",
                    (self.namespace, last, batch),
                ).fetchall()
            if not rows:
                return
            for asin, doc in rows:
                if doc:
                    yield asin, bytes(doc)
            last = rows[-1][0]

    def iter_tombstones(self, batch: int = 1000) -> Iterator[tuple[str, int]]:
        last = ""
        while True:
            with self._lock:
                rows = self.db.execute(
                    "SELECT asin, pv FROM vectors WHERE ns=? AND asin>? AND del=1 ORDER BY asin LIMIT ?", (self.namespace, last, batch)
                ).fetchall()
            if not rows:
                return
            yield from ((asin, int(pv)) for asin, pv in rows)
            last = rows[-1][0]

    def get_pointer(self, name: str) -> str | None:
        with self._lock:
            row = self.db.execute("SELECT value FROM pointers WHERE name=?", (name,)).fetchone()
        return None if row is None else row[0]

    def swap_pointer(self, name: str, value: str, prev_name: str) -> str | None:
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                row = self.db.execute("SELECT value FROM pointers WHERE name=?", (name,)).fetchone()
                self.db.execute("INSERT OR REPLACE INTO pointers (name, value) VALUES (?, ?)", (name, value))
                if row is not None:
                    self.db.execute("INSERT OR REPLACE INTO pointers (name, value) VALUES (?, ?)", (prev_name, row[0]))
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        return None if row is None else row[0]

    def instance(self) -> str:
        return self._instance  # one process's SQLite file: its commits outlive a process crash (WAL)

    def seal(self, group: str, member: str, token: str) -> str:
        with self._lock:
            self._seals[(group, member)] = token
        return self._instance

    def save_offsets(self, group: str, offsets: Mapping[TopicPartition, int], sealed: tuple[str, str] | None = None) -> bool:
        with self._lock:
            if sealed is not None and self._seals.get((group, sealed[0])) != sealed[1]:
                return False
            self.db.executemany(
                "INSERT OR REPLACE INTO offsets (ns, grp, tp, next) VALUES (?, ?, ?, ?)",
                [(self.namespace, group, tp, off) for tp, off in offsets_to_meta(offsets).items()],
            )
        return True

    def load_offsets(self, group: str) -> dict[TopicPartition, int]:
        with self._lock:
            rows = self.db.execute("SELECT tp, next FROM offsets WHERE ns=? AND grp=?", (self.namespace, group)).fetchall()
        return offsets_from_meta(dict(rows))

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        self.db.close()
