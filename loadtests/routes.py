"""Route names the locustfile reports under ("<METHOD> <name>"), the keys of sla.yaml.

Kept apart from the locustfile so the runner and gate never import locust (gevent patches the process)."""

EMBEDDING = "GET /asin/{asin}/embedding"
BATCH = "POST /asin/embeddings"
EMBED_HEAD = "POST /query/embed [head]"
EMBED_TAIL = "POST /query/embed [tail]"
SEARCH_QUERY = "POST /search [query]"
SEARCH_VECTOR = "POST /search [vector]"
SEARCH_ASIN = "POST /search [asin]"
FLOOR = "GET /healthz [floor]"  # a bare endpoint: what any request costs on this machine in this run

ROUTES = (EMBEDDING, BATCH, EMBED_HEAD, EMBED_TAIL, SEARCH_QUERY, SEARCH_VECTOR, SEARCH_ASIN, FLOOR, "Aggregated")


def locust_name(route: str) -> str:
    """The `name=` locust records for a route (its Type column holds the method)."""
    return route.split(" ", 1)[1]
