"""Partner toolkit: torch-free embedding, the pairs format, and fine-tuning on partner pairs."""

import json
import subprocess
import sys

import numpy as np
import pytest

from m5core.bundle import load_manifest
from trainer.partner import PairsError, PartnerBundle, read_pairs


def test_toolkit_embeds_products_and_queries_without_importing_torch(trained_bundle, test_catalog):
    code = f"""
import sys, json
from catalog.io import load_catalog
from trainer.partner import PartnerBundle
b = PartnerBundle({str(trained_bundle)!r})
products = [p for _, p in zip(range(10), load_catalog({str(test_catalog)!r}).products())]
P = b.embed_products(products, batch=4)
Q = b.embed_queries(["red running shoes", "usb c cable"])
print(json.dumps({{"torch": "torch" in sys.modules, "p": list(P.shape), "q": list(Q.shape)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    dim = load_manifest(trained_bundle).dim
    assert got == {"torch": False, "p": [10, dim], "q": [2, dim]}


def test_batched_embedding_equals_one_call(trained_bundle):
    b = PartnerBundle(trained_bundle)
    texts = [f"steel bottle {i} ml" for i in range(7)]
    whole, parts = b.embed_texts(texts, "query", batch=64), b.embed_texts(texts, "query", batch=3)
    assert whole.shape == (7, b.dim)
    assert float((whole * parts).sum(1).min()) > 0.99  # int8 activations are scaled per batch
    assert np.allclose(np.linalg.norm(parts, axis=1), 1, atol=1e-4)


def _write(path, rows):
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


@pytest.mark.parametrize(
    "row,msg",
    [
        ({"text_a": "a", "text_b": "b", "label": 2}, r"pairs.jsonl:2: label must be 0 or 1"),
        ({"text_a": "a", "text_b": "", "label": 1}, r":2: text_b must be a non-empty string"),
        ({"text_a": "a", "text_b": "b", "label": 1, "score": 3}, r":2: unknown field\(s\) score"),
        ({"query": "q", "product_text": "b", "label": 1}, r":2: mixes search rows into a products file"),
        ("{not json", r":2: not JSON"),
        ({"foo": 1}, r":2: needs text_a/text_b or query"),
    ],
)
def test_bad_pairs_name_the_line_and_field(tmp_path, row, msg):
    path = _write(tmp_path / "pairs.jsonl", [{"text_a": "x", "text_b": "y", "label": 1}, row])
    with pytest.raises(PairsError, match=msg):
        read_pairs(path)


def test_pairs_resolve_asins_and_negatives(tmp_path):
    products = {"B000000001": {"title": "Blue bottle", "brand": "Acme", "product_type": "water_bottle", "locale": "en_US"}}
    path = _write(
        tmp_path / "p.jsonl",
        [{"query": "bottle", "product_asin": "B000000001", "label": 1}, "", {"query": "bottle", "product_text": "red kettle", "label": 0}],
    )
    pairs = read_pairs(path, products, "plain")
    assert pairs.kind == "search"
    assert pairs.positives[0][1].startswith("Blue bottle")
    assert pairs.negatives == {"bottle": ["red kettle"]}
    with pytest.raises(PairsError, match="product_asin 'B000000009' is not in the catalog"):
        read_pairs(_write(tmp_path / "q.jsonl", [{"query": "x", "product_asin": "B000000009", "label": 1}]), products)


def test_finetune_on_partner_pairs_publishes_a_loadable_bundle(tmp_path, trained_bundle, test_catalog):
    from catalog.io import load_catalog
    from m5core.schema import render_product
    from trainer.partner import finetune_on_pairs

    cat = load_catalog(test_catalog)
    text = {p["asin"]: render_product(p, "fields") for p in cat.products()}
    rows = [{"text_a": text[d["asin_a"]], "text_b": text[d["asin_b"]], "label": d["label"]} for d in cat.duplicate_pairs("train")[:80]]
    pairs = _write(tmp_path / "pairs.jsonl", rows)
    bundle = finetune_on_pairs(trained_bundle.parent / "run", pairs, tmp_path / "partner", strategy="triplet", steps=3, name="acme")
    m = load_manifest(bundle)
    assert m.version.startswith("acme-")
    assert m.metrics["strategy"] == "triplet"
    assert m.towers["query"].distilled_from is None
    assert (tmp_path / "partner" / "current").resolve() == bundle
    v = PartnerBundle(bundle).embed_texts([rows[0]["text_a"]])
    assert v.shape == (1, m.dim)


def test_partner_finetune_from_a_bundle_that_carries_its_weights(tmp_path, trained_bundle, test_catalog, capsys):
    """`m5 partner finetune --bundle`: a partner needs the bundle we vend, not our run directory; a serving-only
    bundle is refused with how to export one; the held-out fifth is scored before and after."""
    import shutil

    from catalog.io import load_catalog
    from m5cli.main import main
    from m5core.schema import render_product

    run = shutil.copytree(trained_bundle.parent / "run", tmp_path / "run")
    cat = load_catalog(test_catalog)
    text = {p["asin"]: render_product(p, "fields") for p in cat.products()}
    rows = [{"text_a": text[d["asin_a"]], "text_b": text[d["asin_b"]], "label": d["label"]} for d in cat.duplicate_pairs("train")[:200]]
    pairs = _write(tmp_path / "pairs.jsonl", rows)

    assert main(["partner", "finetune", "--bundle", str(trained_bundle), "--pairs", str(pairs), "--out", str(tmp_path / "p0")]) == 2
    err = capsys.readouterr().err
    assert "carries no fine-tunable weights" in err and "--set export.finetunable=true" in err

    export = ["train", "export", "--preset", "test", "--catalog", str(test_catalog), "--run-dir", str(run), "--out", str(tmp_path / "b")]
    assert main([*export, "--set", "export.finetunable=true"]) == 0
    source = (tmp_path / "b" / "current").resolve()
    assert load_manifest(source).finetune is not None and (source / "finetune.safetensors").is_file()

    assert main(["partner", "finetune", "--bundle", str(source), "--pairs", str(pairs), "--out", str(tmp_path / "p"), "--steps", "5"]) == 0
    assert "AUC before" in capsys.readouterr().out
    m = load_manifest((tmp_path / "p" / "current").resolve())
    report = m.metrics["partner"]
    assert report["held_out_rows"] > 0 and 0 <= report["held_out_auc_before"] <= 1 and 0 <= report["held_out_auc_after"] <= 1
    assert m.metrics["base"] == str(source)
    assert PartnerBundle(tmp_path / "p" / "current").embed_texts([rows[0]["text_a"]]).shape == (1, m.dim)
