import numpy as np
import pytest

from m5core.bundle import BundleError, Manifest, TowerSpec, load_manifest, write_manifest
from m5core.encoder import Encoder, HashEncoder


def _bundle(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")
    (tmp_path / "product.int8.onnx").write_bytes(b"onnx")
    m = Manifest(version="t-1", created_at=0.0, dim=8, towers={"product": TowerSpec(onnx="product.int8.onnx")})
    return write_manifest(tmp_path, m)


def test_manifest_hashes_every_file(tmp_path):
    m = _bundle(tmp_path)
    assert set(m.files) == {"tokenizer.json", "product.int8.onnx"}
    assert load_manifest(tmp_path).version == "t-1"


def test_tampered_file_is_refused(tmp_path):
    _bundle(tmp_path)
    (tmp_path / "product.int8.onnx").write_bytes(b"evil")
    with pytest.raises(BundleError, match="sha256 of product.int8.onnx"):
        load_manifest(tmp_path)


def test_a_version_pins_its_manifest(tmp_path):
    """A pinned version is its manifest's digest: re-hashing a swapped file into the manifest (so every file check
    passes) still leaves a manifest that does not hash to the version the store and the namespace hold."""
    import json

    from m5core.bundle import pinned_version

    m = _bundle(tmp_path)
    version = pinned_version("m5-20261203000000", m)
    write_manifest(tmp_path, m.model_copy(update={"version": version}))
    assert load_manifest(tmp_path).version == version
    (tmp_path / "product.int8.onnx").write_bytes(b"evil")
    doc = json.loads((tmp_path / "manifest.json").read_text())
    write_manifest(tmp_path, Manifest.model_validate(doc))  # the attacker's manifest: correct sha256s, same version
    with pytest.raises(BundleError, match="does not hash to its version"):
        load_manifest(tmp_path)


def test_a_bundle_published_before_a_manifest_field_existed_keeps_its_version(tmp_path):
    """`duplicates` came after versions were pinned: a manifest without it (as older bundles were written) must still
    hash to its version, and one that sets it is pinned with it (changing it is tampering)."""
    import json

    from m5core.bundle import DuplicateThreshold, pinned_version

    m = _bundle(tmp_path)
    doc = json.loads(m.model_dump_json())
    del doc["duplicates"]  # written by a release that had no such field
    old = Manifest.model_validate(doc)
    version = pinned_version("m5-20261203000000", old)
    (tmp_path / "manifest.json").write_text(json.dumps({**doc, "version": version}))
    assert load_manifest(tmp_path).version == version
    cal = DuplicateThreshold(threshold=0.87, precision=0.91, recall=0.8, target_precision=0.9, pairs=100, positives=60)
    new = old.model_copy(update={"duplicates": cal})
    pinned = pinned_version("m5-20261203000000", new)
    assert pinned != version
    (tmp_path / "manifest.json").write_text(new.model_copy(update={"version": pinned}).model_dump_json())
    assert load_manifest(tmp_path).duplicates == cal
    lowered = cal.model_copy(update={"threshold": 0.1})  # a looser threshold slipped into a published bundle
    (tmp_path / "manifest.json").write_text(new.model_copy(update={"version": pinned, "duplicates": lowered}).model_dump_json())
    with pytest.raises(BundleError, match="does not hash to its version"):
        load_manifest(tmp_path)


def test_published_bundles_carry_pinned_versions(trained_bundle):
    from m5core.bundle import PINNED

    assert PINNED.search(load_manifest(trained_bundle).version)


def test_missing_bundle_names_the_fix(tmp_path):
    with pytest.raises(BundleError, match="m5 train"):
        load_manifest(tmp_path / "nope")


def test_hash_encoder_is_deterministic_and_batch_equals_single():
    enc = HashEncoder(dim=32)
    assert isinstance(enc, Encoder)
    texts = ["red running shoes", "blaue Laufschuhe", "حذاء جري"]
    batch = enc.embed(texts)
    assert batch.shape == (3, 32)
    assert batch.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)
    for i, t in enumerate(texts):
        np.testing.assert_array_equal(enc.embed([t])[0], batch[i])
    assert enc.embed([]).shape == (0, 32)


def test_onnx_encoder_length_sorted_batches_keep_row_order(trained_bundle):
    """A large batch runs as length-sorted sub-batches; each row must still be its own text's vector."""
    from m5core.encoder import SUB_BATCH, OnnxEncoder

    enc = OnnxEncoder(trained_bundle, "product")
    texts = [("red running shoes " * (1 + i % 7)) + f"item {i}" for i in range(3 * SUB_BATCH + 5)]
    batch = enc.embed(texts)  # (n, dim)
    single = np.concatenate([enc.embed([t]) for t in texts])
    assert batch.shape == (len(texts), enc.dim)
    cos = np.einsum("nd,nd->n", batch, single)
    assert cos.min() > 0.99
    assert np.argmax(batch @ single.T, axis=1).tolist() == list(range(len(texts)))


def test_onnx_encoder_parallel_sub_batches_match_one_thread(trained_bundle):
    """threads=2 runs sub-batches side by side (a small batch too); rows keep their texts' vectors."""
    from m5core.encoder import SUB_BATCH, OnnxEncoder

    one, two = OnnxEncoder(trained_bundle, "product", threads=1), OnnxEncoder(trained_bundle, "product", threads=2)
    try:
        for n in (2, 5, 4 * SUB_BATCH + 3):
            texts = [("blue wool socks " * (1 + i % 5)) + f"size {i}" for i in range(n)]
            a, b = one.embed(texts), two.embed(texts)  # (n, dim) each
            assert b.shape == (n, two.dim)
            assert np.einsum("nd,nd->n", a, b).min() > 0.99
            assert np.argmax(b @ a.T, axis=1).tolist() == list(range(n))
        assert two._pool is not None
        assert two._pool._max_workers == 2
    finally:
        two.close()


@pytest.mark.parametrize("bad", ["../../etc", "a/b", "", ".hidden", "x" * 129, "m5 v1"])
def test_bundle_versions_are_plain_names_before_they_touch_a_path(tmp_path, bad):
    from m5core.bundle import BundleError, check_version
    from service.serving import bundle_dir_for

    assert check_version("m5-20261202203054-811aae") == "m5-20261202203054-811aae"
    with pytest.raises(BundleError, match="not a plain name"):
        bundle_dir_for(tmp_path, bad)
