"""A typed Python client for the M5 service, sync (`M5Client`) and async (`AsyncM5Client`).

    from m5client import M5Client

    with M5Client("http://127.0.0.1:8000", api_key="m5_...") as m5:
        hits = m5.search(query="red running shoes", k=5, fields=["title"])
        vec = m5.embedding(hits[0].asin)          # numpy float32, over the raw-bytes path

One connection pool per client (reuse it); 429 and 503 are retried with exponential back-off that honours
`Retry-After`, up to `retries` times; any other error raises `M5Error` with the service's message. Needs only
httpx and numpy (`pip install m5[client]`), never the server's dependencies.
"""

from m5client.client import AsyncM5Client, Embedding, Hit, M5Client, M5Error, SearchResult

__all__ = ["AsyncM5Client", "Embedding", "Hit", "M5Client", "M5Error", "SearchResult"]
