"""`m5 catalog import`: hand-written ESCI and generic samples (tests/catalog/samples/) become catalogs the rest of M5 reads."""

import orjson
import pytest

from catalog import importer as im
from catalog.io import load_catalog
from m5cli.main import main as m5
from m5core.jsonl import read_jsonl
from m5core.schema import Product, is_asin

SAMPLES = __import__("pathlib").Path(__file__).resolve().parent / "samples"
FIXED_TS = {"updated_at": "1760000000"}  # a constant import time, so two imports compare byte for byte
GENERIC_FLAGS = [
    "--map",
    "asin=id",
    "--map",
    "title=name",
    "--map",
    "brand=brand",
    "--map",
    "product_type=type",
    "--map",
    "product_line=line",
    "--map",
    "locale=lang",
    "--map",
    "bullet_points=bullets",
    "--map",
    "attributes=attrs",
    "--map",
    "updated_at=updated",
    "--map",
    "version=rev",
    "--map",
    "price=price",
]


def _esci(out, fmt="parquet", subset="all", **kw):
    sources = im.esci_sources(SAMPLES / f"esci_products.{fmt}", SAMPLES / f"esci_examples.{fmt}", subset, product_constants=FIXED_TS)
    return im.import_catalog(out, *sources, layout="esci", show_progress=False, **kw)


def _generic_csv(out, **kw):
    base = im.load_map_file(SAMPLES / "generic_map.yaml")
    return im.import_catalog(
        out,
        im.Source(SAMPLES / "generic_products.csv", im.generic_map("products", base["products"], {}, {})),
        im.Source(SAMPLES / "generic_queries.csv", im.generic_map("queries", base["queries"], {}, {})),
        im.Source(SAMPLES / "generic_judgements.csv", im.generic_map("judgements", base["judgements"], {}, {})),
        ids="hash",
        show_progress=False,
        **kw,
    )


def _rejects(d):
    return list(read_jsonl(d / "rejects.jsonl"))


@pytest.fixture(scope="module")
def esci(tmp_path_factory):
    out = tmp_path_factory.mktemp("esci") / "catalog"
    _esci(out)
    return load_catalog(out)


# ------------------------------------------------------------------------------------------- ESCI
def test_esci_import_loads_and_every_product_validates(esci):
    products = [Product.model_validate(p) for p in esci.products()]
    assert sorted(p.asin for p in products) == [
        "4003994155",
        "B000000001",
        "B000000002",
        "B000000003",
        "B000000004",
        "B000000005",
        "B000000006",
        "B000000007",
        "B000000008",
        "B000000010",
    ]


def test_esci_locales_map_to_tags_and_marketplace_is_the_region(esci):
    assert {(p["locale"], p["marketplace"]) for p in esci.products()} == {("en_US", "US"), ("es_ES", "ES"), ("ja_JP", "JP")}


def test_esci_fields_colour_bullets_and_defaults(esci):
    p = {x["asin"]: x for x in esci.products()}
    assert p["B000000001"]["attributes"] == {"colour": "black"}
    assert p["B000000001"]["bullet_points"] == ["Breathable mesh upper", "Rubber outsole with deep lugs"]
    assert p["B000000004"]["brand"] == "unknown"  # no brand in the source: the documented default, not a reject
    assert (p["B000000004"]["product_type"], p["B000000004"]["product_line"]) == ("unknown", "unknown")


def test_esci_queries_one_per_id_with_split_gap_and_form(esci):
    q = {x["query_id"]: x for x in esci.queries()}
    assert {k: v["split"] for k, v in q.items()} == {"101": "train", "102": "test", "103": "train", "104": "test", "105": "test", "106": "train"}
    assert [k for k, v in q.items() if v["lexical_gap"]] == ["105"]  # "hydration flask" shares no word with its Exact
    assert {(v["form"], v["head"], v["locale"]) for v in q.values()} >= {("esci", False, "ja_JP")}


def test_esci_lexical_gap_follows_the_data_card_rule_on_the_written_catalog(esci):
    from catalog.generate import content_words

    products = {p["asin"]: p for p in esci.products()}
    judg = esci.judgements()
    for q in esci.queries():
        exact = [products[a] for a, lbl in judg.get(q["query_id"], {}).items() if lbl == "E"]
        words = [content_words(" ".join([p["title"], p["description"], *p["bullet_points"]])) for p in exact]
        assert q["lexical_gap"] == (bool(exact) and not any(content_words(q["text"]) & w for w in words)), q["query_id"]


def test_esci_judgements_keep_only_imported_products_in_the_query_marketplace(esci):
    j = esci.judgements()
    assert j["102"] == {"B000000003": "E", "B000000004": "S", "B000000005": "I"}
    assert j["103"] == {"B000000006": "E", "B000000007": "I"}  # B000000001 was imported in en_US, not es_ES


def test_esci_rejects_name_row_file_and_reason(esci):
    rejects = {(r["table"], r["row"]): r for r in _rejects(esci.dir)}
    assert set(rejects) == {
        ("products", 6),
        ("products", 7),
        ("products", 8),
        ("products", 11),
        ("judgements", 4),
        ("judgements", 8),
        ("judgements", 11),
        ("judgements", 14),
        ("judgements", 16),
        ("judgements", 17),
    }
    assert rejects[("products", 7)]["reason"] == "title: Field required"
    assert rejects[("products", 6)]["reason"].startswith("asin: String should match pattern")
    assert rejects[("products", 8)]["reason"].startswith("locale: locale 'xx' is not an ll_CC tag")
    assert rejects[("judgements", 14)]["reason"].startswith("label: 'X' is not one of E, S, C, I")
    assert rejects[("products", 7)]["file"].endswith("esci_products.parquet")


def test_esci_manifest_counts_per_file_and_source(esci):
    m = esci.manifest()
    files = {(f["table"], f["file"].rsplit("/", 1)[-1]): (f["read"], f["imported"], f["rejected"]) for f in m["files"]}
    assert files == {
        ("queries", "esci_examples.parquet"): (19, 6, 0),
        ("products", "esci_products.parquet"): (14, 10, 4),
        ("judgements", "esci_examples.parquet"): (19, 13, 6),
    }
    assert (m["layout"], m["products"], m["locales"]) == ("esci", 10, ["en_US", "es_ES", "ja_JP"])
    assert m["sources"]["products"]["file"].endswith("esci_products.parquet")


def test_esci_catalog_has_the_files_train_and_eval_read(esci):
    assert esci.clusters() == []
    assert esci.duplicate_pairs() == []
    assert esci.copurchase() == []


def test_esci_csv_imports_the_same_catalog_as_parquet(tmp_path, esci):
    _esci(tmp_path / "csv", fmt="csv")
    for name in ("products", "queries", "judgements"):
        assert (tmp_path / "csv" / f"{name}.jsonl").read_bytes() == (esci.dir / f"{name}.jsonl").read_bytes(), name


def test_esci_bm25_evaluation_runs_on_the_import(esci):
    pytest.importorskip("bm25s")
    from evaluation.harness import build_encoders, evaluate

    _, kwargs, scheme = build_encoders("bm25")
    r = evaluate(catalog_dir=esci.dir, split="test", scheme=scheme, **kwargs)
    assert (r["queries"], r["search_lexical_gap"]["queries"]) == (3, 1)
    assert r["search"]["recall_at_100"] == 1.0  # every Exact is in its marketplace's top 100 of a handful


def test_esci_valid_share_moves_train_queries_to_valid(tmp_path):
    _esci(tmp_path / "c", valid_share=1.0)
    assert {q["query_id"]: q["split"] for q in load_catalog(tmp_path / "c").queries() if q["split"] != "test"} == {
        "101": "valid",
        "103": "valid",
        "106": "valid",
    }


def test_esci_small_subset_skips_rows_outside_it(tmp_path):
    m = _esci(tmp_path / "c", subset="small")
    assert "106" not in {q["query_id"] for q in load_catalog(tmp_path / "c").queries()}
    assert [f["skipped"] for f in m["files"] if f["table"] == "judgements"] == [2]


# ---------------------------------------------------------------------------------------- generic
def test_generic_csv_with_yaml_map_and_hashed_ids(tmp_path):
    _generic_csv(tmp_path / "c")
    cat = load_catalog(tmp_path / "c")
    products = {p["asin"]: p for p in cat.products()}
    source = {d["source_id"]: d["asin"] for d in read_jsonl(tmp_path / "c" / "id_map.jsonl")}
    assert sorted(source) == ["sku-001", "sku-002", "sku-003", "sku-004", "sku-005", "sku-008", "sku-009", "sku-010"]
    chair = products[source["sku-001"]]
    assert (chair["locale"], chair["marketplace"], chair["product_line"], chair["version"], chair["price"], chair["stock"]) == (
        "fr_FR",
        "FR",
        "garden",
        2,
        29.9,
        12,
    )
    assert chair["attributes"] == {"matiere": "acier", "poids": "3 kg", "colour": "vert"}
    assert products[source["sku-008"]]["brand"] == "sans marque"  # --default brand for an empty cell


def test_generic_judgements_follow_the_hashed_ids(tmp_path):
    _generic_csv(tmp_path / "c")
    cat = load_catalog(tmp_path / "c")
    asins = {p["asin"] for p in cat.products()}
    judged = {a for labels in cat.judgements().values() for a in labels}
    assert judged
    assert judged <= asins
    assert {q["query_id"]: q["lexical_gap"] for q in cat.queries()} == {"g-q1": False, "g-q2": False, "g-q3": True}


def test_generic_group_column_makes_clusters_and_both_pair_labels(tmp_path):
    _generic_csv(tmp_path / "c")
    cat = load_catalog(tmp_path / "c")
    source = {d["asin"]: d["source_id"] for d in read_jsonl(tmp_path / "c" / "id_map.jsonl")}
    clusters = {c["cluster_id"]: sorted(source[a] for a in c["asins"]) for c in cat.clusters()}
    assert clusters["g1"] == ["sku-001", "sku-002"]
    pairs = cat.duplicate_pairs()
    assert {(source[p["asin_a"]], source[p["asin_b"]], p["label"]) for p in pairs} >= {("sku-001", "sku-002", 1), ("sku-004", "sku-005", 1)}
    assert {p["label"] for p in pairs} == {0, 1}


def test_generic_jsonl_with_map_flags_from_the_command_line(tmp_path, capsys):
    out = tmp_path / "c"
    assert (
        m5(
            [
                "catalog",
                "import",
                "generic",
                "--products",
                str(SAMPLES / "generic_products.jsonl"),
                *GENERIC_FLAGS,
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "read 8 rows, imported 4, rejected 4" in capsys.readouterr().out
    assert {p["locale"] for p in load_catalog(out).products()} == {"de_DE", "fr_FR", "ja_JP"}  # de-DE and ja-JP normalised
    rejects = {r["row"]: r["reason"] for r in _rejects(out)}
    assert rejects[7].startswith("not a JSON line")
    assert rejects[5].startswith("asin: String should match pattern")  # --ids asin: a non-ASIN id is a rejected row


def test_generic_parquet_imports_the_same_products_as_jsonl(tmp_path):
    for fmt in ("jsonl", "parquet"):
        assert (
            m5(
                [
                    "catalog",
                    "import",
                    "generic",
                    "--products",
                    str(SAMPLES / f"generic_products.{fmt}"),
                    *GENERIC_FLAGS,
                    "--out",
                    str(tmp_path / fmt),
                    "--no-progress",
                ]
            )
            == 0
        )
    assert (tmp_path / "jsonl" / "products.jsonl").read_bytes() == (tmp_path / "parquet" / "products.jsonl").read_bytes()


def test_parquet_samples_hold_the_rows_of_their_csv_sources():
    pytest.importorskip("pyarrow")
    for name in ("esci_products", "esci_examples"):
        csv_rows = [{k: v or None for k, v in r.items()} for r in im.read_rows(SAMPLES / f"{name}.csv")]
        pq_rows = [{k: (str(v) if v is not None else None) for k, v in r.items()} for r in im.read_rows(SAMPLES / f"{name}.parquet")]
        assert pq_rows == csv_rows, name


# ------------------------------------------------------------------------------------ bad input
def test_missing_mapped_column_is_an_error_naming_it_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "c"
    rc = m5(
        [
            "catalog",
            "import",
            "generic",
            "--products",
            str(SAMPLES / "generic_products.jsonl"),
            *GENERIC_FLAGS,
            "--map",
            "description=blurb",
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2
    assert "no column 'blurb'" in err
    assert "generic_products.jsonl" in err
    assert list(tmp_path.iterdir()) == []


def test_unknown_field_in_a_map_is_an_error():
    with pytest.raises(im.CatalogImportError, match="unknown field 'colour'"):
        im.TableMap("products", columns={"colour": "c"})


def test_existing_output_is_refused_without_force_and_replaced_with_it(tmp_path):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(im.CatalogImportError, match="--force"):
        _esci(out)
    assert (out / "keep.txt").read_text() == "old"
    _esci(out, force=True)
    assert not (out / "keep.txt").exists()
    assert (out / "manifest.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]  # no temporary or old directory left beside it


def test_a_failed_import_leaves_no_partial_directory(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = im.map_product

    def failing(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*a, **kw)

    monkeypatch.setattr(im, "map_product", failing)
    with pytest.raises(OSError, match="disk full"):
        _esci(tmp_path / "c")
    assert list(tmp_path.iterdir()) == []


def test_a_required_field_left_unmapped_is_an_error_before_any_row(tmp_path):
    src = im.Source(SAMPLES / "generic_products.jsonl", im.TableMap("products", columns={"asin": "id", "title": "name"}))
    with pytest.raises(im.CatalogImportError, match="nothing fills brand, product_type, product_line, locale"):
        im.import_catalog(tmp_path / "c", src, show_progress=False)
    assert list(tmp_path.iterdir()) == []


def test_no_product_imported_is_an_error_with_the_first_reasons(tmp_path):
    src = im.Source(
        SAMPLES / "generic_products.jsonl",
        im.TableMap(
            "products", columns={"asin": "name", "title": "name", "brand": "brand", "product_type": "type", "product_line": "line", "locale": "lang"}
        ),
    )
    with pytest.raises(im.CatalogImportError, match=r"no product imported .* row 1: asin"):
        im.import_catalog(tmp_path / "c", src, show_progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------- pure parts
def test_hashed_ids_are_stable_asins():
    assert im.hash_asin("sku-001") == "D3VPVH4WJ9"  # pinned: ids must not change between releases or machines
    assert is_asin(im.hash_asin("x" * 300))
    assert im.hash_asin("sku-001") != im.hash_asin("sku-002")


def test_locale_normalisation():
    assert [im.normalise_locale(x, im.ESCI_LOCALES) for x in ("us", "es", "jp", "JP")] == ["en_US", "es_ES", "ja_JP", "ja_JP"]
    assert [im.normalise_locale(x) for x in ("fr-fr", "pt_BR", "es_419", "jp")] == ["fr_FR", "pt_BR", "es_419", "jp"]


def test_bullets_from_lines_lists_and_json():
    assert im.to_bullets("a\n\n b \n") == ["a", "b"]
    assert im.to_bullets('["a", "b"]') == im.to_bullets(["a", "b", None]) == ["a", "b"]


def test_labels_accept_letters_and_long_names():
    m = im.TableMap("judgements", columns={"query_id": "q", "asin": "a", "label": "l"})
    assert [im.map_judgement({"q": 1, "a": "B000000001", "l": x}, m)["label"] for x in ("E", "substitute", "Complement", "i")] == list("ESCI")


def test_split_without_a_source_split_is_stable_by_text():
    splits = [im.split_of_query(None, str(i), f"query {i}", 0.0) for i in range(2000)]
    assert splits == [im.split_of_query(None, "other id", f"query {i}", 0.0) for i in range(2000)]
    assert 0.7 < splits.count("train") / 2000 < 0.9


def test_truncate_cuts_to_the_schema_bounds_instead_of_rejecting():
    m = im.TableMap(
        "products",
        columns={"asin": "a", "title": "t"},
        constants={"brand": "b", "product_type": "t", "product_line": "pl", "locale": "en_US", "version": 1, "updated_at": 0},
    )
    row = {"a": "B000000001", "t": "x" * 600}
    with pytest.raises(im.RowError, match="title"):
        im.map_product(row, m)
    assert len(im.map_product(row, m, truncate=True).doc["title"]) == 512


def test_manifest_is_json(esci):
    assert orjson.loads((esci.dir / "manifest.json").read_bytes())["importer_version"] == im.IMPORTER_VERSION
