"""ANN index over product vectors (FAISS, inner product on L2-normalised vectors = cosine).

Kinds: `flat` (exact), `ivf_sq8` (IVF + 8-bit scalar quantisation: ~0.4 ms p99 at recall 0.97 on
1M x 256 here, and it supports real removal, which live updates need), `hnsw` (no removal in
FAISS: deletes are masked and the graph is rebuilt when the masked share grows). `auto` is flat
below `IVF_THRESHOLD` vectors and ivf_sq8 above.

Products get dense internal ids so filters are bitmaps: a filtered search passes an
`IDSelectorBitmap` of (live & locale & product_line) into the search, so filtering happens inside
the index and a selective filter cannot silently return fewer results than exist.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
from pathlib import Path

import faiss
import numpy as np

from m5core.settings import IndexKind

log = logging.getLogger(__name__)

IVF_THRESHOLD = 50_000
IVF_MIN_TRAIN = 1_000
DEFAULT_EFFORT = {"ivf_sq8": 32, "hnsw": 128, "flat": 0}  # ivf 32: recall@10 0.983 on 1M served 640-d vectors (16: 0.958)
NEAR_EFFORT = {"ivf_sq8": 16, "hnsw": 128, "flat": 0}
"""Effort of a `near` search (duplicates): IVF lists probed, never widened by a filter (docs/benchmarks.md, "Duplicates")."""
GRAPH_QUANTIZER_LISTS = 1024
"""From this many IVF lists the coarse quantiser is an HNSW graph over the centroids (`_graph_quantizer`)."""
QUANTIZER_EF = 64
"""efSearch of that graph: at 4,000 lists it finds the same lists to probe as the flat quantiser (recall@10 equal to
the third decimal on 1M served vectors) in 0.07 ms instead of 0.81 (docs/benchmarks.md, "A graph over the centroids")."""
_REBUILD_DELETED_SHARE = 0.3
GROW_FACTOR = 4.0  # IVF lists are retrained once the catalog is this many times what they were trained on
_READ_CHUNK = 1024  # vectors read out of the serving index per hold of its lock during a rebuild
# faiss 1.15 scores up to 128,000 queries a call one by one before it calls BLAS: a batch of 32 against 5k x 640
# flat took 12 ms on one thread, 3.4 ms through BLAS; a single query stays on the one-by-one path (0.2-0.4 ms).
# It also decides how IVF's coarse quantiser assigns a batch of queries to lists.
faiss.cvar.distance_compute_blas_threshold = 20


_THREADS: int | None = None  # OpenMP threads of every index call, whatever thread makes it (`set_threads`)


def set_threads(n: int) -> None:
    """OpenMP threads for FAISS in every thread that searches or updates an index. OpenMP keeps the setting per
    thread: set once at start-up it reached the event loop but not the thread pool that runs batch searches nor the
    feed follower, whose idle OpenMP threads then spun against the workers on a 2-core box."""
    global _THREADS
    _THREADS = n
    faiss.omp_set_num_threads(n)


def _omp() -> None:
    if _THREADS is not None:
        faiss.omp_set_num_threads(_THREADS)


def _graph_quantizer(ivf: faiss.IndexIVF) -> None:
    """Swap a flat coarse quantiser for an HNSW graph over the same centroids: the same lists and codes. A flat one
    reads every centroid for each query (4,000 x 640 floats at 1M products: most of a search's time)."""
    graph = faiss.IndexHNSWFlat(ivf.d, 32, faiss.METRIC_INNER_PRODUCT)
    graph.hnsw.efConstruction = 200  # 4,000 centroids: well under a second
    graph.hnsw.efSearch = QUANTIZER_EF  # a search asking for more lists than this explores as many as it asks for
    graph.add(ivf.quantizer.reconstruct_n(0, ivf.nlist))
    old = ivf.quantizer
    if ivf.own_fields:  # read from a file: the index owned the flat one; this proxy frees it on return
        old.this.acquire()
    graph.this.disown()  # the index frees the graph with itself
    ivf.quantizer = graph
    ivf.own_fields = True


def ivf_lists(n: int) -> int:
    """~4 sqrt(n) lists at scale, but at least ~64 vectors a list on small catalogs."""
    return int(max(16, min(4096, 4 * np.sqrt(max(n, 1)), n / 64)))


class AnnIndex:
    def __init__(self, dim: int, kind: IndexKind = "auto", version: str = ""):
        self.dim = dim
        self.requested_kind: IndexKind = kind
        # IVF needs training data: start exact and switch once there is enough to train on.
        self.kind: str = "flat" if kind in ("auto", "ivf_sq8") else kind
        self.version = version  # bundle version of the vectors it holds
        self._lock = threading.RLock()
        self._ids: dict[str, int] = {}  # asin -> dense id
        self._asins: list[str] = []  # dense id -> asin
        self._versions = np.zeros(0, dtype=np.int64)
        self._live = np.zeros(0, dtype=bool)
        self._n_live = None
        # ("locale", "de_DE") -> bool by dense id; made when a value is first indexed (values are open)
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        # (locale, product_line) -> (selector, its bitmap, share of live vectors, count): made on first use, kept in
        # step with every update (`_refresh_selectors`)
        self._sel_cache: dict[tuple, tuple[faiss.IDSelectorBitmap, np.ndarray, float, int]] = {}
        self._index = self._new_index(self.kind)
        self.trained_on = 0  # live vectors when the IVF lists were trained (0: not IVF)
        # While a background rebuild runs: the dense ids changed since it started, replayed into it before the swap.
        self._dirty: set[int] | None = None
        self._rebuilder: threading.Thread | None = None
        self.rebuilds = 0  # finished background rebuilds (flat -> IVF, IVF retrained)

    # ------------------------------------------------------------------ construction
    def _new_index(self, kind: str, train: np.ndarray | None = None, n_total: int | None = None) -> faiss.Index:
        """n_total: the vectors the lists are for, when `train` is a sample of them."""
        if kind == "flat":
            return faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
        if kind == "hnsw":
            # No IDMap: nodes are added in dense-id order and never reused, so the label is the dense id
            # (and IDMap would drop efSearch from the search parameters).
            return faiss.IndexHNSWFlat(self.dim, 32, faiss.METRIC_INNER_PRODUCT)
        if kind == "ivf_sq8":
            n = 0 if train is None else len(train)
            nlist = ivf_lists(n_total or n)
            quantizer = faiss.IndexFlatIP(self.dim)
            idx = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, nlist, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT)
            if train is None or n < nlist:
                raise ValueError(f"ivf_sq8 needs at least {nlist} training vectors, got {n}")
            idx.train(np.ascontiguousarray(train[: min(n, 100 * nlist)], dtype=np.float32))  # k-means over exact assignments
            if nlist >= GRAPH_QUANTIZER_LISTS:
                _graph_quantizer(idx)
            idx.set_direct_map_type(faiss.DirectMap.Hashtable)
            return idx
        raise ValueError(f"unknown index kind {kind!r}")

    @classmethod
    def build(cls, dim: int, asins, vectors, locales, product_lines, versions, kind: IndexKind = "auto", version: str = "") -> AnnIndex:
        """One-pass build (backfill, bootstrap): trains IVF on the data itself when it is chosen."""
        idx = cls(dim, kind, version)
        n = len(asins)
        target = ("ivf_sq8" if n >= IVF_THRESHOLD else "flat") if kind == "auto" else kind
        if target == "ivf_sq8" and n >= IVF_MIN_TRAIN:
            idx.kind = "ivf_sq8"
            idx._index = idx._new_index("ivf_sq8", np.asarray(vectors, dtype=np.float32))
            idx.trained_on = n
        idx.upsert(asins, vectors, locales, product_lines, versions)
        return idx

    # ------------------------------------------------------------------ updates
    def __len__(self) -> int:
        n = self._n_live  # a sum over 1M flags costs ~0.1 ms, and every search asks
        if n is None:
            n = self._n_live = int(self._live.sum())
        return n

    def contains(self, asin: str) -> bool:
        i = self._ids.get(asin)
        return i is not None and bool(self._live[i])

    def version_of(self, asin: str) -> int | None:
        i = self._ids.get(asin)
        return None if i is None or not self._live[i] else int(self._versions[i])

    def held(self, asin: str) -> tuple[np.ndarray, str | None] | None:
        """(the product's vector as the index holds it, its locale), or None if it is not in the index. IVF-SQ8 gives
        back its 8-bit codes decoded (cosine to the stored vector 0.9992-1, median 0.99997, at 1M x 640): what every search
        scores anyway."""
        with self._lock:
            i = self._ids.get(asin)
            if i is None or not self._live[i]:
                return None
            vector = self._index.reconstruct(int(i))
            locale = next((value for (field, value), m in self._masks.items() if field == "locale" and i < len(m) and m[i]), None)
        return vector, locale

    def _grow(self, n: int) -> None:
        cap = len(self._live)
        if n <= cap:
            return
        new = max(n, 2 * cap, 1024)
        self._live = np.concatenate([self._live, np.zeros(new - cap, dtype=bool)])
        self._n_live = None
        self._versions = np.concatenate([self._versions, np.zeros(new - cap, dtype=np.int64)])
        for k, m in self._masks.items():
            self._masks[k] = np.concatenate([m, np.zeros(new - cap, dtype=bool)])

    def _mask(self, field: str, value: str) -> np.ndarray:
        m = self._masks.get((field, value))
        if m is None:
            m = self._masks[(field, value)] = np.zeros(len(self._live), dtype=bool)
        return m

    def upsert(self, asins: list[str], vectors: np.ndarray, locales: list[str], product_lines: list[str], versions: list[int]) -> None:
        """Add or replace vectors. (n, dim) float32, L2-normalised."""
        if not len(asins):
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(asins), self.dim)
        _omp()
        with self._lock:
            replace = [self._ids[a] for a in asins if a in self._ids and self._live[self._ids[a]]]
            if replace and self.kind == "hnsw":
                self._live[replace] = False  # masked; the graph keeps the old node until a rebuild
                for a in asins:
                    self._ids.pop(a, None)
            elif replace:
                self._index.remove_ids(np.asarray(replace, dtype=np.int64))
            ids = []
            for a in asins:
                i = self._ids.get(a)
                if i is None:
                    i = self._ids[a] = len(self._asins)
                    self._asins.append(a)
                ids.append(i)
            self._grow(len(self._asins))
            ids_arr = np.asarray(ids, dtype=np.int64)
            if self._dirty is not None:
                self._dirty.update(ids)
            if self.kind == "hnsw":
                self._hnsw_add(vectors, ids_arr)
            else:
                self._index.add_with_ids(vectors, ids_arr)
            self._live[ids_arr] = True
            self._versions[ids_arr] = versions
            for i, loc, pl in zip(ids, locales, product_lines):
                for m in self._masks.values():
                    m[i] = False
                self._mask("locale", loc)[i] = True
                self._mask("product_line", pl)[i] = True
            self._n_live = None
            self._refresh_selectors(np.asarray(replace + ids, dtype=np.int64))
            self._maybe_migrate()

    def _hnsw_add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Append nodes whose labels must equal their dense ids; a re-added id gets a fresh node."""
        if self._index.ntotal != len(self._asins) - len(ids) or not np.array_equal(ids, np.arange(self._index.ntotal, len(self._asins))):
            fresh = []
            for a in [self._asins[i] for i in ids]:
                self._ids[a] = len(self._asins)
                self._asins.append(a)
                fresh.append(self._ids[a])
            self._grow(len(self._asins))
            ids[:] = fresh
        self._index.add(vectors)

    def remove(self, asins: list[str]) -> int:
        _omp()
        with self._lock:
            ids = [self._ids[a] for a in asins if a in self._ids and self._live[self._ids[a]]]
            if not ids:
                return 0
            if self._dirty is not None:
                self._dirty.update(ids)
            if self.kind != "hnsw":
                self._index.remove_ids(np.asarray(ids, dtype=np.int64))
            else:
                for a in asins:
                    self._ids.pop(a, None)  # a re-added product gets a fresh node
            self._live[ids] = False
            self._n_live = None
            self._refresh_selectors(np.asarray(ids, dtype=np.int64))
            self._maybe_migrate()
            return len(ids)

    def _maybe_migrate(self) -> None:
        """auto: flat -> ivf_sq8 past the threshold, and IVF lists retrained as the catalog grows, both in the
        background; hnsw: rebuilt in place when too many nodes are masked (its dense ids change)."""
        n_live = len(self)
        grow = self.kind == "flat" and (
            (self.requested_kind == "auto" and n_live >= 2 * IVF_THRESHOLD) or (self.requested_kind == "ivf_sq8" and n_live >= IVF_MIN_TRAIN)
        )
        retrain = self.kind == "ivf_sq8" and n_live >= GROW_FACTOR * max(self.trained_on, IVF_MIN_TRAIN)
        stale = self.kind == "hnsw" and self._index.ntotal > 1000 and (self._index.ntotal - n_live) > _REBUILD_DELETED_SHARE * self._index.ntotal
        if (grow or retrain) and self._rebuilder is None:
            self._dirty = set()
            self._rebuilder = threading.Thread(target=self._rebuild_ivf, name="m5-index-rebuild", daemon=True)
            self._rebuilder.start()
        elif stale:
            self._compact_hnsw()

    def wait_rebuilt(self, timeout: float | None = None) -> bool:
        """Block until a background rebuild in progress has swapped in; -> False on timeout."""
        t = self._rebuilder
        if t is not None:
            t.join(timeout)
            return not t.is_alive()
        return True

    def _read(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ids still live, their vectors) out of the serving index, the lock held for one chunk at a time: the
        writers and searches wait for one chunk's copy, not the whole read. An id changed meanwhile is in `_dirty`."""
        got_ids, got = [], []
        for at in range(0, len(ids), _READ_CHUNK):
            with self._lock:
                part = ids[at : at + _READ_CHUNK]
                part = part[self._live[part]]
                if len(part):
                    got.append(self._index.reconstruct_batch(part.astype(np.int64)))
                    got_ids.append(part)
        if not got:
            return np.zeros(0, np.int64), np.zeros((0, self.dim), np.float32)
        return np.concatenate(got_ids).astype(np.int64), np.vstack(got)

    def _rebuild_ivf(self) -> None:
        """Train IVF lists on the live vectors and fill a new index beside the serving one, then replay what changed
        meanwhile and swap it in under the lock: searches and updates never wait for the training or the fill."""
        try:
            faiss.omp_set_num_threads(1)  # this thread's own OpenMP setting: the training leaves the other cores to searches
            with self._lock:
                ids = np.flatnonzero(self._live[: len(self._asins)]).astype(np.int64)
            rng = np.random.default_rng(len(ids))
            sample = np.sort(rng.choice(ids, min(len(ids), 100 * ivf_lists(len(ids))), replace=False))
            _, train = self._read(sample)
            new = self._new_index("ivf_sq8", train, n_total=len(ids))  # the k-means: seconds, outside the lock
            for at in range(0, len(ids), 8 * _READ_CHUNK):
                self._copy_into(new, ids[at : at + 8 * _READ_CHUNK])
            for _ in range(3):  # catch up outside the lock while much changed; the last few under it
                with self._lock:
                    if len(self._dirty) <= _READ_CHUNK:
                        break
                    dirty, self._dirty = np.fromiter(self._dirty, np.int64), set()
                self._copy_into(new, dirty, replace=True)
            with self._lock:  # reentrant: `_read` inside takes it again
                self._copy_into(new, np.fromiter(self._dirty, np.int64), replace=True)
                self._index, self.kind, self.trained_on = new, "ivf_sq8", len(ids)
                self._sel_cache.clear()
                self.rebuilds += 1
        except Exception:  # noqa: BLE001 - the serving index stays as it was; the next update tries again
            log.exception("index rebuild failed; serving the current index")
        finally:
            with self._lock:
                self._dirty, self._rebuilder = None, None

    def _copy_into(self, new: faiss.Index, ids: np.ndarray, replace: bool = False) -> None:
        """The serving index's current vectors of `ids` into `new` (replace: drop what `new` held of them first; an id
        no longer live is then simply gone)."""
        if replace and len(ids):
            new.remove_ids(ids)
        got_ids, vecs = self._read(ids)
        if len(got_ids):
            new.add_with_ids(vecs, got_ids)

    def _compact_hnsw(self) -> None:
        """A new graph of the live nodes, which get new dense ids 0..n-1 (FAISS's HNSW cannot remove a node)."""
        live_ids = np.flatnonzero(self._live[: len(self._asins)]).astype(np.int64)
        vecs = self._index.reconstruct_batch(live_ids) if len(live_ids) else np.zeros((0, self.dim), np.float32)
        self._index = self._new_index("hnsw")
        asins = [self._asins[i] for i in live_ids]
        vers, masks = self._versions[live_ids], {k: m[live_ids] for k, m in self._masks.items()}
        self._asins, self._ids = asins, {a: i for i, a in enumerate(asins)}
        self._live = np.ones(len(asins), dtype=bool)
        self._n_live = None
        self._versions = vers.copy()
        self._masks = {k: m.copy() for k, m in masks.items()}
        self._sel_cache.clear()
        if len(asins):
            self._index.add(vecs)

    def _refresh_selectors(self, ids: np.ndarray) -> None:
        """The cached filter bitmaps follow an update in place: rebuilding one costs ~0.5 ms at 1M products, and the
        feed updates the index many times a second, so clearing them made most filtered searches (every duplicates
        call) pay it. A bitmap shorter than the new ids (products added since it was made) is dropped instead."""
        ids = np.unique(ids)
        for key, (sel, bits, _, count) in list(self._sel_cache.items()):
            if len(ids) and int(ids.max()) >= sel.n:
                del self._sel_cache[key]
                continue
            want = self._live[ids].copy()
            for field, value in zip(("locale", "product_line"), key):
                if value is not None:
                    want &= self._masks[(field, value)][ids]
            byte, bit = ids >> 3, np.left_shift(1, ids & 7).astype(np.uint8)
            had = (bits[byte] & bit) != 0
            np.bitwise_and.at(bits, byte, ~bit)
            np.bitwise_or.at(bits, byte[want], bit[want])
            count += int(want.sum()) - int(had.sum())
            self._sel_cache[key] = (sel, bits, count / max(1, len(self)), count)

    # ------------------------------------------------------------------ search
    def _selector(self, locale: str | None, product_line: str | None):
        """(IDSelectorBitmap, share of live vectors it keeps), cached until the next update; None when
        a filter value is one no product has had, so nothing matches."""
        key = (locale, product_line)
        hit = self._sel_cache.get(key)
        if hit is not None:
            return hit[0], hit[2]
        wanted = [self._masks.get(k) for k in (("locale", locale), ("product_line", product_line)) if k[1] is not None]
        if any(m is None for m in wanted):
            # Neither cached nor given a mask: filter values are open, so caching them would let callers grow memory.
            return None
        n = len(self._asins)
        mask = self._live[:n].copy()
        for m in wanted:
            mask &= m[:n]
        bits = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bits))
        count = int(mask.sum())
        share = count / max(1, len(self))
        self._sel_cache[key] = (sel, bits, share, count)  # keep the bitmap alive as long as the selector
        return sel, share

    def _params(self, sel, share: float, effort: int | None, near: bool = False):
        effort = effort or (NEAR_EFFORT if near else DEFAULT_EFFORT)[self.kind]
        if self.kind == "ivf_sq8":
            # Scale the probe by the filter's selectivity so about as many matching vectors are scanned.
            nprobe = min(self._index.nlist, int(np.ceil(effort if near else effort / max(share, 1e-6))))
            return faiss.SearchParametersIVF(sel=sel, nprobe=nprobe)
        if self.kind == "hnsw":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=int(effort / max(share, 0.05)))
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    def search(
        self,
        queries: np.ndarray,
        k: int,
        locale: str | None = None,
        product_line: str | None = None,
        exclude: str | None = None,
        effort: int | None = None,
        near: bool = False,
    ) -> list[list[tuple[str, float]]]:
        """Top-k by cosine. (n, dim) float32 -> per query [(asin, score)], best first.

        A filtered IVF search probes effort / (the filter's share of the catalog) lists, so that about as many matching
        vectors are scanned as unfiltered, and all lists when the probed ones hold fewer than k matches. `near`: only
        neighbours above a high cosine are wanted (duplicates); they sit in the lists nearest the query whatever the
        filter, so the probe stays at `effort` (default NEAR_EFFORT) and what it found is returned."""
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        _omp()
        with self._lock:
            n_live = len(self)
            if n_live == 0:
                return [[] for _ in range(len(queries))]
            kk = min(k + (1 if exclude else 0), n_live)
            filtered = locale is not None or product_line is not None or self.kind == "hnsw"
            picked = self._selector(locale, product_line) if filtered else (None, 1.0)
            if picked is None:
                return [[] for _ in range(len(queries))]
            sel, share = picked
            params = self._params(sel, share, effort, near)
            scores, ids = self._index.search(queries, kk, params=params) if params else self._index.search(queries, kk)
            if self.kind == "ivf_sq8" and filtered and not near and (ids[:, -1] < 0).any():
                # A selective filter can leave the probed lists short: widen the probe rather than return less.
                scores, ids = self._search_every_list(queries, kk, sel)
            out = []
            for row_s, row_i in zip(scores, ids):
                hits = [(self._asins[i], float(s)) for s, i in zip(row_s, row_i) if i >= 0 and self._asins[i] != exclude]
                out.append(hits[:k])
            return out

    def _search_every_list(self, queries: np.ndarray, k: int, sel) -> tuple[np.ndarray, np.ndarray]:
        """An IVF search of every list. A graph quantiser asked for all of them can miss some (the graph is
        approximate), so every list is handed over with its exact coarse score (the codes are residuals of it)."""
        ivf = self._index
        params = faiss.SearchParametersIVF(sel=sel, nprobe=ivf.nlist)
        if isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
            return ivf.search(queries, k, params=params)
        cent = ivf.quantizer.reconstruct_n(0, ivf.nlist)  # a copy (10 MB at 1M), small beside a scan of every list
        n = len(queries)
        coarse = np.ascontiguousarray(queries @ cent.T, dtype=np.float32)
        lists = np.ascontiguousarray(np.broadcast_to(np.arange(ivf.nlist, dtype=np.int64), coarse.shape))
        scores, ids = np.empty((n, k), np.float32), np.empty((n, k), np.int64)
        sp = faiss.swig_ptr
        ivf.search_preassigned_c(n, sp(queries), k, sp(lists), sp(coarse), sp(scores), sp(ids), False, params)
        return scores, ids

    # ------------------------------------------------------------------ snapshots
    def save(self, path: Path | str, meta: dict | None = None) -> None:
        """Write a snapshot directory atomically (temp dir + rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        with self._lock:
            faiss.write_index(self._index, str(tmp / "index.faiss"))
            n = len(self._asins)
            np.savez(
                tmp / "meta.npz",
                asins=np.array(self._asins, dtype="U10"),
                live=self._live[:n],
                versions=self._versions[:n],
                masks=np.stack([m[:n] for m in self._masks.values()]) if self._masks else np.zeros((0, n), bool),
            )
            info = {
                "dim": self.dim,
                "kind": self.kind,
                "requested_kind": self.requested_kind,
                "version": self.version,
                "mask_keys": [list(k) for k in self._masks],  # in JSON: the arrays file holds plain arrays only
                "trained_on": self.trained_on,
                "meta": meta or {},
            }
        (tmp / "index.json").write_text(json.dumps(info))
        shutil.rmtree(path, ignore_errors=True)
        tmp.rename(path)

    @classmethod
    def load(cls, path: Path | str) -> tuple[AnnIndex, dict]:
        path = Path(path)
        info = json.loads((path / "index.json").read_text())
        idx = cls(info["dim"], info["requested_kind"], info["version"])
        idx.kind = info["kind"]
        idx._index = faiss.read_index(str(path / "index.faiss"))
        flat_quantizer = idx.kind == "ivf_sq8" and isinstance(faiss.downcast_index(idx._index.quantizer), faiss.IndexFlat)
        if flat_quantizer and idx._index.nlist >= GRAPH_QUANTIZER_LISTS:
            _graph_quantizer(idx._index)  # a snapshot written before the graph: the same lists, searched faster
        if "mask_keys" not in info:
            raise ValueError(f"{path}: snapshot written before masks moved out of pickled arrays; it is rebuilt from the store")
        z = np.load(path / "meta.npz", allow_pickle=False)  # a snapshot directory must not be able to run code
        idx._asins = [str(a) for a in z["asins"]]
        idx._ids = {a: i for i, a in enumerate(idx._asins)}
        idx._live = z["live"].copy()
        idx._n_live = None
        idx._versions = z["versions"].copy()
        idx._masks = {tuple(k): m.copy() for k, m in zip(info["mask_keys"], z["masks"])}
        idx.trained_on = info.get("trained_on", len(idx) if idx.kind == "ivf_sq8" else 0)  # older snapshots: as if trained now
        return idx, info["meta"]
