"""What a batch of events does to the store (pure): fold each ASIN's events, then embed, touch,
delete or skip against what the store holds."""

from __future__ import annotations

from dataclasses import dataclass, field

from m5core.schema import ChangeEvent, apply_patch, content_hash


@dataclass
class Plan:
    embed: list[dict] = field(default_factory=list)  # product docs whose embedded content changed
    touch: list[dict] = field(default_factory=list)  # docs with new metadata, same content hash
    delete: list[tuple[str, int, float]] = field(default_factory=list)  # (asin, version, ts)
    stale: list[ChangeEvent] = field(default_factory=list)  # not newer than the store
    # Exactly what the store holds: a replay after a crash between the store write and the feed
    # flush. The feed may lack it, so publish it again (consumers apply it idempotently).
    republish: list[tuple[str, int, bool]] = field(default_factory=list)  # (asin, stored version, is tombstone)
    unknown: list[ChangeEvent] = field(default_factory=list)  # patches for a product never seen
    invalid: list[tuple[ChangeEvent, str]] = field(default_factory=list)  # patches that would break the product, and why
    ts: dict[str, float] = field(default_factory=dict)  # asin -> event time of the newest change


def fold(
    events: list[ChangeEvent], stored_docs: dict[str, dict | None]
) -> dict[str, tuple[str, dict | None, int, float, list[ChangeEvent], list[tuple[ChangeEvent, str]]]]:
    """Per ASIN, apply its events in version order.

    -> (state "live"|"deleted"|"unknown", doc, version, ts, unknown patches, (invalid patch, why)); an invalid
    patch is skipped, the product stays as the events before it left it.
    """
    out = {}
    by_asin: dict[str, list[ChangeEvent]] = {}
    for e in events:
        by_asin.setdefault(e.asin, []).append(e)
    for asin, evs in by_asin.items():
        evs.sort(key=lambda e: e.version)
        doc = stored_docs.get(asin)
        state = "live" if doc is not None else "unknown"
        version, ts, orphans, invalid = -1, 0.0, [], []
        for e in evs:
            if e.op == "upsert":
                doc, state = e.product.model_dump(), "live"
            elif e.op == "delete":
                doc, state = None, "deleted"
            elif doc is None:
                orphans.append(e)
                continue
            else:
                try:
                    doc = apply_patch(doc, e)
                except ValueError as exc:
                    invalid.append((e, str(exc)))
                    continue
            version, ts = e.version, e.ts
        out[asin] = (state, doc, version, ts, orphans, invalid)
    return out


def plan_batch(events: list[ChangeEvent], stored: dict[str, tuple[int | None, str | None, bool]], stored_docs: dict[str, dict | None]) -> Plan:
    """stored: asin -> (version, content hash, tombstone) as the store holds it.

    Events not newer than the store are set aside before folding: a stale upsert folded under a newer patch
    would otherwise put its old content in the store at the patch's version.
    """
    plan = Plan()
    fresh: list[ChangeEvent] = []
    for e in events:
        held = stored.get(e.asin, (None, None, False))[0]
        (plan.stale if held is not None and e.version <= held else fresh).append(e)
    for asin in dict.fromkeys(e.asin for e in plan.stale):
        held_version, _, tomb = stored[asin]
        if asin not in {e.asin for e in fresh} and any(e.asin == asin and e.version == held_version for e in plan.stale):
            plan.republish.append((asin, held_version, tomb))
    # A delete in the batch was (or may already have been, before a crash or a store rollback) published as a
    # tombstone: the relisting after it must publish its vector, even with the content the store holds.
    deleted_here = {e.asin for e in fresh if e.op == "delete"}
    for asin, (state, doc, version, ts, orphans, invalid) in fold(fresh, stored_docs).items():
        plan.unknown += orphans
        plan.invalid += invalid
        if version < 0:
            continue
        held_hash, tomb = stored.get(asin, (None, None, False))[1:]
        plan.ts[asin] = ts
        if state == "deleted":
            plan.delete.append((asin, version, ts))
        elif state == "live":
            doc = {**doc, "version": version}
            if held_hash is not None and not tomb and asin not in deleted_here and content_hash(doc) == held_hash:
                plan.touch.append(doc)
            else:
                plan.embed.append(doc)
    return plan
