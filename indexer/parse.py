"""Bytes off the wire -> a validated ChangeEvent, or a dead letter that says why (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from m5core.events.base import Message
from m5core.schema import ChangeEvent

MAX_KEY_BYTES = 256
"""A key is an ASIN (10 characters); anything past this is not one. Bounds the dead letter built from it too:
a 300 KB key once made a dead-letter record over the producer's request limit and stalled the partition."""
MAX_ERROR_CHARS = 2_000


@dataclass(frozen=True)
class DeadLetter:
    reason: str  # malformed_json | schema | oversize | key_mismatch | unknown_asin | encode_failed
    error: str
    message: Message

    def key(self) -> bytes | None:
        """The source key, cut to MAX_KEY_BYTES: the record stays far under any producer limit."""
        return None if self.message.key is None else self.message.key[:MAX_KEY_BYTES]

    def payload(self) -> bytes:
        """The dead-letter record (under 20 KB whatever came in: payload, key and error are cut)."""
        m = self.message
        return orjson.dumps(
            {
                "reason": self.reason,
                "error": self.error[:MAX_ERROR_CHARS],
                "payload": (m.value or b"").decode("utf-8", "replace")[:10_000],
                "payload_bytes": len(m.value or b""),
                "key_bytes": len(m.key or b""),
                "source": {"topic": m.topic, "partition": m.partition, "offset": m.offset},
            }
        )


def parse_event(msg: Message, max_bytes: int) -> ChangeEvent | DeadLetter:
    if msg.key is not None and len(msg.key) > MAX_KEY_BYTES:
        return DeadLetter("oversize", f"key is {len(msg.key)} bytes, the limit is {MAX_KEY_BYTES} (keys are ASINs)", msg)
    if msg.value is None:
        return DeadLetter("schema", "null value: deletes are events with op 'delete', not tombstones", msg)
    if len(msg.value) > max_bytes:
        return DeadLetter("oversize", f"payload is {len(msg.value)} bytes, the limit is {max_bytes}", msg)
    try:
        doc = orjson.loads(msg.value)
    except orjson.JSONDecodeError as exc:
        return DeadLetter("malformed_json", str(exc), msg)
    try:
        event = ChangeEvent.model_validate(doc)
    except ValidationError as exc:
        errs = "; ".join(f"{'.'.join(str(x) for x in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors()[:5])
        return DeadLetter("schema", errs, msg)
    if msg.key is not None and msg.key.decode("utf-8", "replace") != event.asin:
        return DeadLetter("key_mismatch", f"message key {msg.key[:32]!r} differs from asin {event.asin!r}", msg)
    return event
