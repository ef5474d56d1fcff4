"""m5client against a real uvicorn server (sync) and the app in process (async), and the README's example."""

import asyncio
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from m5client import AsyncM5Client, M5Client, M5Error
from m5core.events.local import LocalSource
from m5core.stores.local import LocalStore
from service.app import create_app
from service.settings import ServiceSettings
from tests.service.conftest import ENC, TEXTS, listing, seed_records

REPO = Path(__file__).resolve().parents[2]
KEY = "k3y-for-the-client-tests"


@pytest.fixture
def server(tmp_path):
    """`m5 serve`'s app on a free port in a thread: a key, and a rate limit low enough to meet a 429."""

    def start(**overrides):
        s = ServiceSettings(
            store="local",
            events="local",
            local_store_path=tmp_path / "s.sqlite",
            local_events_dir=tmp_path / "ev",
            api_key=KEY,
            **overrides,
        )
        store = LocalStore(s.local_store_path)
        seed_records(store)
        app = create_app(s, encoder=ENC, store=store, feed_source=LocalSource(s.local_events_dir, [s.embeddings_topic], "svc"))
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        thread = threading.Thread(target=lambda: asyncio.run(srv.serve(sockets=[sock])), daemon=True)
        thread.start()
        deadline = time.time() + 20
        while not srv.started:
            assert time.time() < deadline, "the test server did not start"
            time.sleep(0.02)
        started.append((srv, thread))
        return f"http://127.0.0.1:{sock.getsockname()[1]}", store

    started = []
    yield start
    for srv, thread in started:
        srv.should_exit = True
        thread.join(timeout=10)


def test_the_sync_client_searches_embeds_and_names_errors(server):
    url, store = server()
    with M5Client(url, api_key=KEY) as m5:
        hits = m5.search("red running shoes", k=3, filters={"locale": "en_US"})
        assert len(hits) == 3
        assert hits[0].asin in TEXTS
        assert hits[0].product is None
        emb = m5.embedding("B000000001")
        np.testing.assert_array_equal(emb.vector, store.get("B000000001").vector)
        assert emb.vector.dtype == np.float32
        assert emb.bundle_version == ENC.version
        assert m5.embed_queries(["a", "b"]).shape == (2, ENC.dim)
        more = m5.search_result(asin="B000000001", k=2)
        assert "B000000001" not in [h.asin for h in more.hits]
        assert more.bundle_version == ENC.version
        with pytest.raises(M5Error) as e:
            m5.embedding("B00000000Z")
        assert e.value.status == 404
        assert "not in the catalog" in e.value.detail
        with pytest.raises(ValueError, match="exactly one"):
            m5.search("x", asin="B000000001")
        dups = m5.duplicates("B000000001", threshold=0.2, fields=["title"])
        assert [d.asin for d in dups] == ["B000000002"] and dups[0].score >= 0.2 and "title" in dups[0].product
        with pytest.raises(M5Error) as e:
            m5.duplicates("B000000001")  # the test encoder carries no calibrated threshold
        assert e.value.status == 409
        new = listing("B0000000NW", "red running shoes size 42")
        (of_new,) = m5.duplicates_of([new], threshold=0.2)
        assert of_new[0].asin == "B000000001"
        with pytest.raises(M5Error) as e:
            m5.duplicates_of([{**new, "title": ""}], threshold=0.2)
        assert e.value.status == 422 and "products.0.title" in e.value.detail
    with M5Client(url, api_key="wrong") as m5, pytest.raises(M5Error) as e:
        m5.search("shoes")
    assert e.value.status == 401


def test_the_client_waits_out_429_and_503_with_back_off(server):
    url, _ = server(key_rate_per_s=2, key_burst=1)
    with M5Client(url, api_key=KEY, retries=20, backoff_cap_s=0.1) as m5:
        t0 = time.monotonic()
        results = [m5.search("shoes", k=1) for _ in range(4)]  # a bucket of 1 refilled at 2/s: three of them wait
        assert all(len(r) == 1 for r in results)
        assert time.monotonic() - t0 >= 1.0
    with M5Client(url, api_key=KEY, retries=0) as m5:
        while True:  # no retries: the 429 reaches the caller
            try:
                m5.search("shoes", k=1)
            except M5Error as e:
                assert e.status == 429
                break


async def test_the_async_client_in_process(api):
    h = await api(api_key=KEY)
    async with AsyncM5Client("http://t", api_key=KEY, transport=httpx.ASGITransport(app=h.app)) as m5:
        hits = await m5.search("blaue Laufschuhe", k=2)
        assert len(hits) == 2
        vec = (await m5.embedding(hits[0].asin)).vector
        assert vec.shape == (ENC.dim,)
        with pytest.raises(M5Error) as e:
            await m5.search("x", k=100_000)
        assert e.value.status == 422
        with pytest.raises(TypeError, match="filter"):
            await m5.search("x", filter={"locale": "en_US"})  # a typo is an error, not a search without the filter
        assert [d.asin for d in await m5.duplicates("B000000001", threshold=-1, scope="all")] != []
        (of_new,) = await m5.duplicates_of([listing("B0000000NW", "rote Laufschuhe Größe 42", "de_DE")], threshold=-1)
        assert {d.asin for d in of_new} == {"B000000003", "B000000005"}  # the German marketplace's products


def test_the_readme_example_runs(server):
    url, store = server()
    from m5core.stores.base import VectorRecord

    rec = store.get("B000000001")  # the example prints each hit's title: give the products documents
    docs = {a: f'{{"title": "{t}", "locale": "{loc}"}}'.encode() for a, (t, loc, _) in TEXTS.items()}
    store.put([VectorRecord(a, store.get(a).vector, 2, rec.bundle_version, "h", TEXTS[a][1], TEXTS[a][2], 2.0, docs[a]) for a in TEXTS])
    readme = (REPO / "README.md").read_text()
    (code,) = re.findall(r"<!-- client-example -->\s*```python\n(.*?)```", readme, flags=re.S)
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env={**os.environ, "M5_URL": url, "M5_API_KEY": KEY}, cwd=REPO
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "red running shoes size 42" in r.stdout
    assert "404 asin B00NOTHERE is not in the catalog" in r.stdout
