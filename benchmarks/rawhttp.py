"""One HTTP/1.1 exchange on a keep-alive asyncio connection, for the benchmark clients: a few microseconds of client
work where an HTTP library's would blur sub-millisecond figures."""

from __future__ import annotations

import asyncio


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, method: str, path: str, body: bytes = b"") -> bytes:
    """Send one request, read the whole answer; -> its body. A status other than 200 ends the run with the head."""
    head = f"{method} {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    got = await reader.readuntil(b"\r\n\r\n")
    if not got.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"{method} {path}: {got[:80]!r}")
    size = int(next(x for x in got.split(b"\r\n") if x.lower().startswith(b"content-length:")).split(b":")[1])
    return await reader.readexactly(size)
