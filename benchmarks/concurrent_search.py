"""Closed-loop load on `POST /search` by ASIN from N keep-alive connections (raw asyncio, ns clock), against a
service already running (e.g. `m5 serve --workers 2` over a 1M snapshot):

    .venv/bin/python benchmarks/concurrent_search.py --port 8131 --asins ASINS.txt --connections 32 --requests 8000

Each connection sends its next request when the last answer is in, so latency is about connections / throughput
once the service is saturated. Prints throughput and end-to-end p50 / p99.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.rawhttp import exchange  # noqa: E402


async def connection(port: int, asins: list[str], start: int, n: int, out: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for i in range(n):
        body = json.dumps({"asin": asins[(start + i) % len(asins)], "k": 10}).encode()
        t0 = time.perf_counter_ns()
        await exchange(reader, writer, "POST", "/search", body)
        out.append((time.perf_counter_ns() - t0) / 1e6)
    writer.close()


async def run(args: argparse.Namespace) -> None:
    asins = Path(args.asins).read_text().split()
    warm: list[float] = []
    await asyncio.gather(*(connection(args.port, asins, i * 7919, 20, warm) for i in range(args.connections)))
    out: list[float] = []
    t0 = time.perf_counter()
    per = args.requests // args.connections
    await asyncio.gather(*(connection(args.port, asins, i * 7919, per, out) for i in range(args.connections)))
    elapsed = time.perf_counter() - t0
    t = np.array(out)
    print(
        f"{args.connections} connections: {len(t)} searches in {elapsed:.1f} s = {len(t) / elapsed:.0f}/s; "
        f"e2e p50 {np.percentile(t, 50):.2f} ms, p99 {np.percentile(t, 99):.2f} ms"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--asins", required=True, help="file of ASINs in the catalog, one per line")
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--requests", type=int, default=8000)
    uvloop.run(run(ap.parse_args()))


if __name__ == "__main__":
    main()
