"""Batch planning is pure: events + what the store holds -> embed / touch / delete / skip."""

from indexer.plan import plan_batch
from m5core.schema import ChangeEvent, content_hash
from tests.indexer.conftest import product

A, B = "B000000001", "B000000002"


def up(asin, v, **kw):
    return ChangeEvent(op="upsert", asin=asin, version=v, ts=1.0 + v, product=product(asin, v, **kw))


def dele(asin, v):
    return ChangeEvent(op="delete", asin=asin, version=v, ts=1.0 + v)


def pat(asin, v, **kw):
    return ChangeEvent(op="patch", asin=asin, version=v, ts=1.0 + v, **kw)


def test_new_asin_is_embedded():
    plan = plan_batch([up(A, 1)], {}, {})
    assert [d["asin"] for d in plan.embed] == [A]
    assert not plan.touch
    assert not plan.delete
    assert plan.ts == {A: 2.0}


def test_several_events_for_one_asin_collapse_to_the_newest_in_any_order():
    plan = plan_batch([up(A, 3, title="third"), up(A, 1, title="first"), up(A, 2, title="second")], {}, {})
    assert len(plan.embed) == 1
    assert plan.embed[0]["title"] == "third"
    assert plan.embed[0]["version"] == 3


def test_delete_after_upsert_in_one_batch_deletes():
    plan = plan_batch([up(A, 1), dele(A, 2)], {}, {})
    assert plan.delete == [(A, 2, 3.0)]
    assert not plan.embed


def test_older_or_equal_than_stored_is_stale_and_equal_is_republished():
    stored = {A: (5, "h", False), B: (4, None, True)}
    plan = plan_batch([up(A, 4), up(A, 5), up(B, 4)], stored, {})
    assert not plan.embed
    assert len(plan.stale) == 3
    assert sorted(plan.republish) == [(A, 5, False), (B, 4, True)]


def test_a_relisting_after_a_delete_in_the_batch_is_embedded_even_with_the_stored_content():
    """The delete's tombstone may be on the feed already (published before a crash or a store rollback): a touch
    would leave every follower with the product deleted while the store holds it live."""
    doc = up(A, 8).product.model_dump()
    plan = plan_batch([dele(A, 11), up(A, 12)], {A: (8, content_hash({**doc, "version": 12}), False)}, {A: doc})
    assert not plan.touch
    assert [d["version"] for d in plan.embed] == [12]


def test_same_content_hash_is_touched_not_embedded():
    doc = up(A, 1).product.model_dump()
    plan = plan_batch([pat(A, 2, price=3.5)], {A: (1, content_hash(doc), False)}, {A: doc})
    assert not plan.embed
    assert len(plan.touch) == 1
    assert plan.touch[0]["price"] == 3.5
    assert plan.touch[0]["version"] == 2


def test_a_move_to_another_product_line_is_written_not_touched():
    """The filter fields live in the store record and in every index: a line-only change must reach them."""
    held = up(A, 1).product.model_dump()
    same_text = up(A, 2, product_line="garden")
    assert plan_batch([up(A, 2)], {A: (1, content_hash(held), False)}, {A: held}).touch  # the control: same everything is a touch
    plan = plan_batch([same_text], {A: (1, content_hash(held), False)}, {A: held})
    assert not plan.touch
    assert [d["product_line"] for d in plan.embed] == ["garden"]


def test_a_stale_upsert_cannot_ride_a_newer_patch_into_the_store():
    """Stored v10 "new title"; a late upsert v5 "old title" and a price patch v11 arrive together: v11 keeps the new title."""
    held = up(A, 10, title="new title").product.model_dump()
    plan = plan_batch([up(A, 5, title="old title"), pat(A, 11, price=2.0)], {A: (10, content_hash(held), False)}, {A: held})
    assert [e.version for e in plan.stale] == [5]
    assert [(d["title"], d["version"], d["price"]) for d in plan.touch] == [("new title", 11, 2.0)]
    assert not plan.embed


def test_a_patch_that_would_break_the_product_is_set_aside_with_the_reason():
    from m5core.schema import MAX_ATTRIBUTES

    held = up(A, 1).product.model_dump()  # one attribute already
    too_many = pat(A, 2, attributes={f"a{i}": "x" for i in range(MAX_ATTRIBUTES)})
    plan = plan_batch([too_many, pat(A, 3, price=4.0)], {A: (1, content_hash(held), False)}, {A: held})
    assert [(e.version, "attributes" in why) for e, why in plan.invalid] == [(2, True)]
    assert [(d["version"], d["price"], len(d["attributes"])) for d in plan.touch] == [(3, 4.0, 1)]


def test_attribute_patch_changes_content_and_is_embedded():
    doc = product(A, 1)
    plan = plan_batch([pat(A, 2, attributes={"colour": "blue"})], {A: (1, content_hash(doc), False)}, {A: doc})
    assert len(plan.embed) == 1
    assert plan.embed[0]["attributes"] == {"colour": "blue"}


def test_patch_for_an_unknown_asin_is_reported_unknown():
    plan = plan_batch([pat(B, 2, price=1.0)], {}, {B: None})
    assert [e.asin for e in plan.unknown] == [B]
    assert not plan.embed
    assert not plan.touch


def test_upsert_then_patch_in_one_batch_folds_onto_the_upsert():
    plan = plan_batch([up(A, 1), pat(A, 2, attributes={"size": "M"})], {}, {A: None})
    assert len(plan.embed) == 1
    assert plan.embed[0]["attributes"] == {"colour": "red", "size": "M"}


def test_upsert_over_a_tombstone_with_the_same_hash_is_embedded_again():
    doc = product(A, 3)
    plan = plan_batch([up(A, 3)], {A: (2, content_hash(doc), True)}, {})
    assert len(plan.embed) == 1
    assert not plan.touch
