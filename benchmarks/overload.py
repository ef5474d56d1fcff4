"""Overload: `m5 serve` under 4x its capacity, with and without shedding by queueing delay.

An open-loop client (requests sent on a fixed schedule, latency counted from the scheduled time, so a
slow server cannot slow the client down and hide its own queue) drives `POST /search` by text with the
query cache off (every request runs the query tower) in three phases: light load, 4x the measured
capacity, light load again. Run once with `--shed-wait-ms 0` and once with a budget; per second it
records the p50/p99 of the accepted requests and the share shed, and writes a PNG and JSON.

    .venv/bin/python benchmarks/overload.py --bundle .m5/bundles/current --shed-wait-ms 2

Needs Redis (M5_REDIS_URL=$(deploy/local/services.sh url redis) after `deploy/local/services.sh start redis`); its vectors live under a throwaway
namespace deleted at the end. One worker: the client takes the other core of a 2-core box.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.service_latency import clustered, drop_namespace, load_redis, stop_server, wait_ready  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
log = logging.getLogger("overload")
CONTENT_LENGTH = re.compile(rb"content-length: *(\d+)", re.I)


class Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time."""

    def connection_made(self, transport):
        self.transport, self.buf, self.waiter = transport, b"", None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        m = CONTENT_LENGTH.search(self.buf, 0, end)
        size = end + 4 + (int(m.group(1)) if m else 0)
        if len(self.buf) >= size:
            status, self.buf = int(self.buf[9:12]), self.buf[size:]
            self.waiter.set_result(status)

    def connection_lost(self, exc) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(599)

    async def request(self, raw: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(raw)
        return await self.waiter


def raw_search(text: str, port: int) -> bytes:
    body = json.dumps({"query": text, "k": 10}).encode()
    head = f"POST /search HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def drive(port: int, phases: list[tuple[float, float]], bodies: list[bytes], conns: int) -> list[tuple[float, float, int]]:
    """Open loop: request i of a phase is due at its start + i / rate. -> (due time, latency from due, status) each."""
    loop = asyncio.get_running_loop()
    pool: asyncio.Queue = asyncio.Queue()
    for _ in range(conns):
        _, c = await loop.create_connection(Conn, "127.0.0.1", port)
        pool.put_nowait(c)
    out: list[tuple[float, float, int]] = []
    t0 = time.perf_counter()

    async def one(due: float, raw: bytes) -> None:
        c = await pool.get()
        status = await c.request(raw)
        out.append((due - t0, time.perf_counter() - due, status))
        if status == 599:
            _, c = await loop.create_connection(Conn, "127.0.0.1", port)
        pool.put_nowait(c)

    tasks, start, i = [], t0, 0
    for seconds, rate in phases:
        n = int(seconds * rate)
        for j in range(n):
            due = start + j / rate
            if (wait := due - time.perf_counter()) > 0.0005:
                await asyncio.sleep(wait)
            tasks.append(asyncio.ensure_future(one(due, bodies[i % len(bodies)])))
            i += 1
        start += seconds
        log.info("phase done: %.0f s at %.0f req/s (%d sent so far, %d answered)", seconds, rate, i, len(out))
    await asyncio.gather(*tasks)
    return out


def per_second(records: list[tuple[float, float, int]]) -> list[dict]:
    rows = []
    for s in range(int(max(r[0] for r in records)) + 1):
        sec = [r for r in records if s <= r[0] < s + 1]
        ok = np.array([lat for _, lat, st in sec if st == 200]) * 1000
        shed = sum(1 for *_, st in sec if st == 503)
        rows.append(
            {
                "t": s,
                "sent": len(sec),
                "ok": len(ok),
                "shed_share": round(shed / max(1, len(sec)), 3),
                "p50_ms": round(float(np.percentile(ok, 50)), 3) if len(ok) else None,
                "p99_ms": round(float(np.percentile(ok, 99)), 3) if len(ok) else None,
            }
        )
    return rows


def serve(args, ns: str, shed_wait_ms: float) -> subprocess.Popen:
    env = {
        **os.environ,
        "M5_STORE": "redis",
        "M5_REDIS_URL": args.redis_url,
        "M5_NAMESPACE": ns,
        "M5_EVENTS": "local",
        "M5_LOCAL_EVENTS_DIR": str(args.work / "events"),
        "M5_SNAPSHOT_DIR": str(args.work / "snapshots"),
        "M5_BUNDLE": str(args.bundle),
        "M5_QUERY_CACHE_SIZE": "0",
        "M5_SHED_WAIT_MS": str(shed_wait_ms),
        "M5_MODEL_POLL_S": "0",
    }
    proc = subprocess.Popen([sys.executable, "-m", "m5cli.main", "serve", "--port", str(args.port), "--workers", "1"], cwd=REPO, env=env)
    return wait_ready(proc, f"http://127.0.0.1:{args.port}/readyz", 300)


def capacity(port: int, bodies: list[bytes], seconds: float = 5.0, conns: int = 8) -> float:
    """Closed loop, `conns` requests always in flight: answered requests a second."""

    async def run() -> int:
        loop = asyncio.get_running_loop()
        done, stop = 0, time.perf_counter() + seconds

        async def client(k: int) -> None:
            nonlocal done
            _, c = await loop.create_connection(Conn, "127.0.0.1", port)
            while time.perf_counter() < stop:
                if await c.request(bodies[(done + k) % len(bodies)]) == 200:
                    done += 1
            c.transport.close()

        await asyncio.gather(*(client(k) for k in range(conns)))
        return done

    return asyncio.run(run()) / seconds


def plot(runs: dict, phases: list[tuple[float, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    for label, rows in runs.items():
        t = [r["t"] for r in rows]
        axes[0].plot(t, [r["p99_ms"] for r in rows], label=f"{label}: p99")
        axes[0].plot(t, [r["p50_ms"] for r in rows], "--", label=f"{label}: p50")
        axes[1].plot(t, [100 * r["shed_share"] for r in rows], label=label)
    edge = 0.0
    for seconds, _ in phases[:-1]:
        edge += seconds
        for ax in axes:
            ax.axvline(edge, color="grey", lw=0.8, ls=":")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("accepted requests, ms (from scheduled send)")
    axes[0].legend(fontsize=8)
    axes[1].set_ylabel("shed (503), % of sent")
    axes[1].set_xlabel("seconds (light load | 4x capacity | light load)")
    axes[1].legend(fontsize=8)
    fig.suptitle("POST /search by text, 1 worker, query cache off: overload with and without shedding")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--n", type=int, default=20_000, help="synthetic product vectors of the bundle's dim")
    ap.add_argument("--shed-wait-ms", type=float, default=2.0, help="the budget of the shedding run")
    ap.add_argument("--overload", type=float, default=4.0, help="offered load in the middle phase, times capacity")
    ap.add_argument("--light", type=float, default=0.2, help="offered load before and after, times capacity")
    ap.add_argument("--seconds", default="10,20,15", help="phase lengths: light, overload, light")
    ap.add_argument("--conns", type=int, default=128)
    ap.add_argument("--port", type=int, default=8127)
    ap.add_argument("--redis-url", default=os.environ.get("M5_REDIS_URL", "redis://127.0.0.1:6379/0"))
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "overload.png")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from m5core.bundle import load_manifest
    from m5core.schema import id_to_asin

    manifest = load_manifest(args.bundle)
    args.work = Path(tempfile.mkdtemp(prefix="m5-overload-"))
    ns = f"overload{os.getpid()}"
    x = clustered(args.n, manifest.dim, clusters=max(64, args.n // 200), seed=0)
    load_redis(args.redis_url, ns, [id_to_asin(36**9 + i) for i in range(args.n)], x, manifest.version)
    words = "running shoes water bottle stainless steel backpack headphones wireless charger coffee beans desk lamp novel jacket".split()
    rng = np.random.default_rng(0)
    bodies = [raw_search(" ".join(rng.choice(words, size=5)) + f" {i}", args.port) for i in range(5000)]  # distinct texts
    lengths = [float(v) for v in args.seconds.split(",")]
    results: dict = {"machine": "2-core x86-64, 24 GiB", "bundle": manifest.version, "n": args.n, "runs": {}}
    try:
        proc = serve(args, ns, 0.0)
        try:
            cap = capacity(args.port, bodies)
        finally:
            stop_server(proc)
        phases = [(lengths[0], args.light * cap), (lengths[1], args.overload * cap), (lengths[2], args.light * cap)]
        results.update({"capacity_rps": round(cap, 1), "phases": [{"seconds": s, "rate": round(r, 1)} for s, r in phases]})
        log.info("capacity %.0f req/s; phases %s", cap, phases)
        for label, budget in (("no shedding", 0.0), (f"shed after {args.shed_wait_ms:g} ms", args.shed_wait_ms)):
            proc = serve(args, ns, budget)
            try:
                records = asyncio.run(drive(args.port, phases, bodies, args.conns))
            finally:
                stop_server(proc)
            rows = per_second(records)
            ok = [(due, lat) for due, lat, st in records if st == 200]
            summary = {}
            mid = lengths[0] + lengths[1]
            edges = (("light_before", 0, lengths[0]), ("overload", lengths[0], mid), ("light_after", mid, 1e9))
            for name, lo, hi in edges:
                lat = np.array([la for due, la in ok if lo <= due < hi]) * 1000
                sent = [r for r in records if lo <= r[0] < hi]
                shed = np.array([la for due, la, st in sent if st == 503]) * 1000
                summary[name] = {
                    "ok": len(lat),
                    "shed_share": round(len(shed) / max(1, len(sent)), 3),
                    "p50_ms": round(float(np.percentile(lat, 50)), 3) if len(lat) else None,
                    "p99_ms": round(float(np.percentile(lat, 99)), 3) if len(lat) else None,
                    "shed_p50_ms": round(float(np.percentile(shed, 50)), 3) if len(shed) else None,
                }
            results["runs"][label] = {"summary": summary, "per_second": rows}
            log.info("%s: %s", label, summary)
        plot({k: v["per_second"] for k, v in results["runs"].items()}, phases, args.out)
    finally:
        drop_namespace(args.redis_url, ns)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "runs"} | {k: v["summary"] for k, v in results["runs"].items()}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
