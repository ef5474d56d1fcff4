"""A Redis host that stops answering fails calls within the store's timeout instead of hanging them."""

import socket
import threading
import time

import pytest
import redis

from m5core.stores.redis import RedisStore


def test_a_silent_redis_fails_within_the_timeout():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)  # accepts connections (the kernel does), never answers: a frozen host
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        store = RedisStore(f"redis://127.0.0.1:{server.getsockname()[1]}/0", "t", timeout_s=0.5)
        t0 = time.monotonic()
        assert store.ping() is False
        with pytest.raises(redis.TimeoutError):
            store.get("B000000001")
        assert time.monotonic() - t0 < 5  # two calls bounded by 0.5 s each (plus retries the client makes)
    finally:
        stop.set()
        t.join(timeout=2)
        for c in held:
            c.close()
        server.close()
