"""Bytes off the wire -> a validated ChangeEvent, or a dead letter that says why (pure)."""

from __future__ import annotations

from dataclasses import dataclass

import orjson
from pydantic import ValidationError

from m5core.events.base import Message
from m5core.schema import ChangeEvent


@dataclass(frozen=True)
class DeadLetter:
    reason: str  # malformed_json | schema | oversize | key_mismatch | unknown_asin | encode_failed
    error: str
    message: Message

    def payload(self) -> bytes:
        m = self.message
        return orjson.dumps(
            {
                "reason": self.reason,
                "error": self.error,
                "payload": (m.value or b"").decode("utf-8", "replace")[:10_000],
                "payload_bytes": len(m.value or b""),
                "source": {"topic": m.topic, "partition": m.partition, "offset": m.offset},
            }
        )


def parse_event(msg: Message, max_bytes: int) -> ChangeEvent | DeadLetter:
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
        return DeadLetter("key_mismatch", f"message key {msg.key!r} differs from asin {event.asin!r}", msg)
    return event
