import httpx
import pytest

from m5core.encoder import HashEncoder
from m5core.events.local import LocalSink, LocalSource
from m5core.feed import encode_feed_value
from m5core.stores.base import VectorRecord
from m5core.stores.local import LocalStore
from service.app import create_app
from service.settings import ServiceSettings

TEXTS = {
    "B000000001": ("red running shoes size 42", "en_US", "softlines"),
    "B000000002": ("blue running shoes size 40", "en_US", "softlines"),
    "B000000003": ("rote Laufschuhe Größe 42", "de_DE", "softlines"),
    "B000000004": ("steel water bottle 1 l", "en_US", "hardlines"),
    "B000000005": ("coffee beans dark roast 500 g", "de_DE", "consumables"),
}
ENC = HashEncoder(dim=32)


def seed_records(store, encoder=ENC, pv=1):
    vecs = encoder.embed([t for t, _, _ in TEXTS.values()])
    recs = [VectorRecord(a, v, pv, encoder.version, "h", loc, pl, 1.0) for (a, (_, loc, pl)), v in zip(TEXTS.items(), vecs)]
    store.put(recs)
    return recs


def listing(asin: str, title: str, locale: str = "en_US", **over) -> dict:
    """A product document in the catalog schema (for POST /duplicates with documents)."""
    return {
        "asin": asin,
        "marketplace": "US",
        "locale": locale,
        "product_line": "softlines",
        "product_type": "shoes",
        "brand": "Acme",
        "title": title,
        "version": 1,
        "updated_at": 0,
        **over,
    }


class Harness:
    def __init__(self, app, client, store, sink, settings):
        self.app, self.client, self.store, self.sink, self.settings = app, client, store, sink, settings

    def publish(self, rec):
        if self.store.put([rec])[0]:
            self.sink.send(self.settings.embeddings_topic, rec.asin.encode(), encode_feed_value(rec))
            self.sink.flush()


@pytest.fixture
async def api(tmp_path):
    async def make(extra_records=(), **overrides):
        s = ServiceSettings(store="local", events="local", local_store_path=tmp_path / "s.sqlite", local_events_dir=tmp_path / "ev", **overrides)
        store = LocalStore(s.local_store_path)
        seed_records(store)
        store.put(list(extra_records))
        source = LocalSource(s.local_events_dir, [s.embeddings_topic], "svc")
        app = create_app(s, encoder=ENC, store=store, feed_source=source)
        ctx = app.router.lifespan_context(app)
        await ctx.__aenter__()
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        made.append((ctx, client))
        return Harness(app, client, store, LocalSink(s.local_events_dir), s)

    made = []
    yield make
    for ctx, client in made:
        await client.aclose()
        await ctx.__aexit__(None, None, None)
