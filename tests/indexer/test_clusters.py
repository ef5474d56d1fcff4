"""`m5 duplicates clusters`: connected components of above-threshold neighbour links, capped, as JSONL."""

import numpy as np
import orjson
import pytest

from indexer.clusters import Clusters
from m5cli.main import main
from m5core.stores.base import VectorRecord
from m5core.stores.local import LocalStore
from m5core.stores.redis import RedisStore


def test_a_capped_join_is_refused_and_counted_on_both_sides():
    uf = Clusters(6, max_size=3)
    assert uf.join(0, 1) and uf.join(1, 2)  # {0, 1, 2}
    assert uf.join(3, 4)  # {3, 4}
    assert not uf.join(2, 3)  # 3 + 2 > 3
    assert uf.root(0) != uf.root(3)
    assert uf.cut[uf.root(0)] == 1 and uf.cut[uf.root(3)] == 1
    assert uf.join(0, 2)  # already together
    assert uf.size[uf.root(5)] == 1


def catalog_vectors() -> list[VectorRecord]:
    """Three near-identical en_US listings, a pair, one German twin of the pair, and singles: unit vectors in 8-d."""
    rng = np.random.default_rng(0)
    base = {name: rng.standard_normal(8) for name in ("trio", "pair", "single1", "single2")}
    rows = [
        ("B00000TRI1", "trio", "en_US"),
        ("B00000TRI2", "trio", "en_US"),
        ("B00000TRI3", "trio", "en_US"),
        ("B00000PAR1", "pair", "en_US"),
        ("B00000PAR2", "pair", "en_US"),
        ("B00000PARD", "pair", "de_DE"),
        ("B00000SNG1", "single1", "en_US"),
        ("B00000SNG2", "single2", "en_US"),
    ]
    out = []
    for i, (asin, group, locale) in enumerate(rows):
        v = base[group] + 0.05 * rng.standard_normal(8)
        out.append(VectorRecord(asin, (v / np.linalg.norm(v)).astype(np.float32), 1, "b-1", f"h{i}", locale, "softlines", 1.0))
    return out


@pytest.fixture(params=["local", "redis"])
def store_args(request, tmp_path, unique_name):
    if request.param == "local":
        store = LocalStore(tmp_path / "store.sqlite", "dups")
        args = ["--store", "local", "--local-store-path", str(tmp_path / "store.sqlite"), "--namespace", "dups"]
    else:
        url, ns = request.getfixturevalue("redis_url"), unique_name("dups")
        store = RedisStore(url, ns)
        args = ["--store", "redis", "--redis-url", url, "--namespace", ns]
    store.put(catalog_vectors())
    store.close()
    return args


def read(path):
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def test_clusters_follow_links_above_the_threshold_within_a_locale(store_args, tmp_path, capsys):
    out = tmp_path / "clusters.jsonl"
    assert main(["duplicates", "clusters", "--out", str(out), "--threshold", "0.9", *store_args]) == 0
    got = read(out)
    assert [c["asins"] for c in got] == [["B00000TRI1", "B00000TRI2", "B00000TRI3"], ["B00000PAR1", "B00000PAR2"]]
    assert [c["size"] for c in got] == [3, 2] and all(0.9 <= c["min_link"] <= 1 and "cut" not in c for c in got)
    assert "clusters': 2" in capsys.readouterr().out
    assert main(["duplicates", "clusters", "--out", str(out), "--threshold", "0.9", "--scope", "all", *store_args]) == 0
    across = [c["asins"] for c in read(out)]  # across marketplaces the German twin joins its pair
    assert across == [["B00000PAR1", "B00000PAR2", "B00000PARD"], ["B00000TRI1", "B00000TRI2", "B00000TRI3"]]


def test_the_size_cap_cuts_a_cluster_and_says_why(store_args, tmp_path):
    out = tmp_path / "clusters.jsonl"
    assert main(["duplicates", "clusters", "--out", str(out), "--threshold", "0.9", "--max-cluster", "2", *store_args]) == 0
    got = read(out)
    assert all(c["size"] <= 2 for c in got)
    trio = [c for c in got if c["asins"][0].startswith("B00000TRI")]
    assert len(trio) == 1 and trio[0]["cut"]["links"] >= 1 and "size cap 2" in trio[0]["cut"]["reason"]


def test_bad_clusters_requests_name_the_problem(tmp_path, capsys):
    out = tmp_path / "c.jsonl"
    local = ["--store", "local", "--local-store-path", str(tmp_path / "empty.sqlite"), "--namespace", "none"]
    with pytest.raises(SystemExit) as e:
        main(["duplicates", "clusters", "--out", str(out), "--threshold", "2", *local])
    assert e.value.code == 2 and "--threshold" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["duplicates", "clusters", "--out", str(out), "--threshold", "0.9", "--k", "0", *local])
    assert e.value.code == 2 and "--k" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["duplicates", "clusters", "--out", str(out), "--threshold", "0.9", *local])
    assert e.value.code == 2 and "holds no products" in capsys.readouterr().err
    assert not out.exists()  # nothing partial
