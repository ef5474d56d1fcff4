"""Local event log: one JSON-lines file per topic (a single partition 0), for the embedded demo.

Works across processes: the sink appends whole lines under an flock and fsyncs on flush; a source
tails the file and keeps its group's committed offset in a sidecar file written atomically.
"""

from __future__ import annotations

import base64
import fcntl
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import orjson

from m5core.bundle import atomic_write_bytes
from m5core.events.base import EventSink, EventSource, Message, TopicPartition


def _b64(x: bytes | None) -> str | None:
    return None if x is None else base64.b64encode(x).decode()


def _unb64(x: str | None) -> bytes | None:
    return None if x is None else base64.b64decode(x)


class LocalSink(EventSink):
    def __init__(self, directory: Path | str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._files: dict[str, object] = {}
        self._count: dict[str, tuple[int, int]] = {}  # topic -> (lines, file size) after our last write

    def _file(self, topic: str):
        f = self._files.get(topic)
        if f is None:
            f = self._files[topic] = open(self.dir / f"{topic}.jsonl", "ab+")
        return f

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()) -> None:
        f = self._file(topic)
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            # The offset is the line number: count lines once per open file, then keep counting.
            offset = self._next_offset(topic, f)
            rec = {"offset": offset, "key": _b64(key), "value": _b64(value), "ts": int(time.time() * 1000)}
            if headers:
                rec["headers"] = [[k, _b64(v)] for k, v in headers]
            line = orjson.dumps(rec)
            f.write(line + b"\n")
            f.flush()
            self._count[topic] = (offset + 1, os.fstat(f.fileno()).st_size)
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)

    def _next_offset(self, topic: str, f) -> int:
        """The offset is the line number; recount only when another writer appended since our last write."""
        lines, size = self._count.get(topic, (-1, -1))
        if size != os.fstat(f.fileno()).st_size:
            f.seek(0)
            lines = sum(1 for _ in f)
        return lines

    def flush(self, timeout_s: float = 30.0) -> None:
        for f in self._files.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.flush()
        for f in self._files.values():
            f.close()
        self._files.clear()


class LocalSource(EventSource):
    def __init__(self, directory: Path | str, topics: list[str], group_id: str):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.group = group_id
        self.topics = list(topics)
        self._pos: dict[str, int] = {}  # topic -> byte position of the next line
        self._next: dict[str, int] = {}  # topic -> next offset
        for t in self.topics:
            self.seek({(t, 0): self._committed(t)})

    def _offset_file(self, topic: str) -> Path:
        return self.dir / f"{topic}.{self.group}.offset"

    def _committed(self, topic: str) -> int:
        f = self._offset_file(topic)
        return int(f.read_text()) if f.exists() else 0

    def seek(self, offsets: Mapping[TopicPartition, int]) -> None:
        for (topic, _), target in offsets.items():
            pos, n = 0, 0
            path = self.dir / f"{topic}.jsonl"
            if path.exists() and target > 0:
                with open(path, "rb") as f:
                    for line in f:
                        if n == target or not line.endswith(b"\n"):
                            break
                        pos += len(line)
                        n += 1
            self._pos[topic], self._next[topic] = pos, n

    def poll(self, max_records: int = 500, timeout_s: float = 0.1) -> list[Message]:
        deadline = time.monotonic() + timeout_s
        while True:
            out: list[Message] = []
            for topic in self.topics:
                path = self.dir / f"{topic}.jsonl"
                if not path.exists():
                    continue
                with open(path, "rb") as f:
                    f.seek(self._pos[topic])
                    while len(out) < max_records:
                        line = f.readline()
                        if not line.endswith(b"\n"):  # absent or half-written: read it next time
                            break
                        d = orjson.loads(line)
                        headers = tuple((k, _unb64(v)) for k, v in d.get("headers", ()))
                        out.append(Message(topic, 0, d["offset"], _unb64(d["key"]), _unb64(d["value"]), d["ts"], headers))
                        self._pos[topic] += len(line)
                        self._next[topic] = d["offset"] + 1
            if out or time.monotonic() >= deadline:
                return out
            time.sleep(min(0.01, max(0.0, deadline - time.monotonic())))

    def assignment(self) -> list[TopicPartition]:
        return [(t, 0) for t in self.topics]

    def on_assign(self, start: Callable[[list[TopicPartition]], Mapping[TopicPartition, int]]) -> None:
        """One reader owns every topic here: its partitions are assigned at once."""
        self.seek(start([(t, 0) for t in self.topics]))

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        for (topic, _), off in offsets.items():
            atomic_write_bytes(self._offset_file(topic), str(off).encode())

    def end_offsets(self) -> dict[TopicPartition, int]:
        out = {}
        for t in self.topics:
            path = self.dir / f"{t}.jsonl"
            with open(path, "rb") if path.exists() else open(os.devnull, "rb") as f:
                out[(t, 0)] = sum(1 for line in f if line.endswith(b"\n"))
        return out

    def lag(self) -> dict[TopicPartition, int]:
        return {tp: max(0, end - self._next[tp[0]]) for tp, end in self.end_offsets().items()}
