"""API keys: named, scoped, stored hashed, rotated without a restart, each with its own rate limit.

The keys file is JSON that holds no secret, only each key's SHA-256:

    {"keys": [{"name": "search-team", "sha256": "9f86d0...", "scopes": ["read"], "rate_per_s": 500, "burst": 1000}]}

`m5 keys add` makes a key, prints it once and writes its hash here; `m5 keys remove` drops one. The
service re-reads the file when it changes (checked at most once a second, on the request path: one
stat), so a rotation is add the new key, move the clients, remove the old one, with no restart. A key
is a 256-bit random token: one SHA-256, not a slow password hash, is the right check for it, and the
lookup by hash leaks nothing about the key through timing.

Scopes: `read` (embeddings, query embedding, search), `admin` (the /admin routes). A key given as
`M5_API_KEY` is named `default` and holds both.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

SCOPES = ("read", "admin")
NAME_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"


class KeysFileError(ValueError):
    """The keys file cannot be used; the message names the file and the entry."""


def digest(key: str | bytes) -> str:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).hexdigest()


def new_key() -> str:
    return "m5_" + secrets.token_urlsafe(32)


def scope_of(path: str) -> str:
    """The scope a route needs."""
    return "admin" if path.startswith("/admin/") else "read"


@dataclass
class TokenBucket:
    """`rate` requests a second on average, `burst` at once; rate 0 is unlimited."""

    rate: float
    burst: float
    tokens: float = -1.0
    at: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> float:
        """0.0 when a request may go now, else the seconds until it could (the Retry-After)."""
        if self.rate <= 0:
            return 0.0
        if self.tokens < 0:  # a new bucket starts full
            self.tokens = self.burst
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate


@dataclass(frozen=True)
class ApiKey:
    name: str
    sha256: str
    scopes: frozenset[str]
    rate_per_s: float = 0.0
    """0: the service's default (`M5_KEY_RATE_PER_S`)."""
    burst: float = 0.0


def parse_keys(doc: object, where: str) -> list[ApiKey]:
    """The keys file's JSON -> keys. Raises KeysFileError naming the entry and the field."""
    import re

    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeysFileError(f'{where}: expected {{"keys": [...]}}')
    out, names = [], set()
    for i, e in enumerate(doc["keys"]):
        at = f"{where}: keys[{i}]"
        if not isinstance(e, dict):
            raise KeysFileError(f"{at}: expected an object")
        name, sha, scopes = e.get("name"), e.get("sha256"), e.get("scopes")
        if not isinstance(name, str) or not re.match(NAME_PATTERN, name):
            raise KeysFileError(f"{at}.name: expected 1-64 of A-Z a-z 0-9 . _ -, got {name!r}")
        if name in names:
            raise KeysFileError(f"{at}.name: {name!r} appears twice")
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise KeysFileError(f"{at}.sha256: expected 64 lower-case hex digits (the key's SHA-256, never the key)")
        if not isinstance(scopes, list) or not scopes or any(s not in SCOPES for s in scopes):
            raise KeysFileError(f"{at}.scopes: expected a non-empty list of {list(SCOPES)}, got {scopes!r}")
        limits = {}
        for f in ("rate_per_s", "burst"):
            v = e.get(f, 0)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise KeysFileError(f"{at}.{f}: expected a number >= 0, got {v!r}")
            limits[f] = float(v)
        names.add(name)
        out.append(ApiKey(name, sha, frozenset(scopes), **limits))
    return out


def read_keys_file(path: Path) -> list[ApiKey]:
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise KeysFileError(f"{path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise KeysFileError(f"{path}: not JSON ({exc})") from None
    return parse_keys(doc, str(path))


def write_keys_file(path: Path, keys: list[ApiKey]) -> None:
    """Atomically (temporary file, then rename), readable by its owner only."""
    doc = {"keys": [{"name": k.name, "sha256": k.sha256, "scopes": sorted(k.scopes), "rate_per_s": k.rate_per_s, "burst": k.burst} for k in keys]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    os.replace(tmp, path)


class KeyRing:
    """The keys in force: the file's (re-read when it changes) and the one from the environment.

    A file that turns unreadable or invalid keeps the keys last read (and says so in the log): a typo
    during a rotation must not lock every client out, or let every client in."""

    RECHECK_S = 1.0

    def __init__(self, file: Path | None, env_key: str | None, default_rate: float = 0.0, default_burst: float = 0.0, log=None):
        self.file = file
        self.default_rate, self.default_burst = default_rate, default_burst
        self.log = log
        self.fixed = [ApiKey("default", digest(env_key), frozenset(SCOPES))] if env_key else []
        self.by_hash: dict[str, ApiKey] = {}
        self.buckets: dict[str, TokenBucket] = {}
        self._stamp: tuple | None = None
        self._checked = 0.0
        keys = read_keys_file(file) if file is not None else []  # at startup a bad file is an error
        self._install(keys)
        if file is not None:
            self._stamp = self._file_stamp()

    @property
    def enabled(self) -> bool:
        return bool(self.by_hash) or self.file is not None

    def _file_stamp(self) -> tuple | None:
        try:
            st = self.file.stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def _install(self, keys: list[ApiKey]) -> None:
        self.by_hash = {k.sha256: k for k in [*self.fixed, *keys]}
        old = self.buckets
        self.buckets = {}
        for k in self.by_hash.values():
            rate = k.rate_per_s or self.default_rate
            burst = max(k.burst or self.default_burst or rate, 1.0)
            b = old.get(k.name)  # a reload keeps a key's bucket (and what it has spent) when its limits did not change
            self.buckets[k.name] = b if b is not None and (b.rate, b.burst) == (rate, burst) else TokenBucket(rate, burst)

    def refresh(self, now: float, force: bool = False) -> bool:
        """Re-read the file if it changed since the last look (at most once per RECHECK_S unless forced). -> re-read."""
        if self.file is None or (not force and now - self._checked < self.RECHECK_S):
            return False
        self._checked = now
        stamp = self._file_stamp()
        if stamp == self._stamp and not force:
            return False
        try:
            keys = read_keys_file(self.file)
        except KeysFileError as exc:
            if self.log:
                self.log.error("keys file not reloaded, the keys last read stay in force: %s", exc)
            return False
        self._stamp = stamp
        self._install(keys)
        if self.log:
            self.log.info("keys file reloaded: %d keys", len(self.by_hash))
        return True

    def lookup(self, presented: bytes) -> ApiKey | None:
        return self.by_hash.get(digest(presented))
