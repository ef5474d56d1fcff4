"""Readiness check and idempotent creation of M5's topics (used by services.sh)."""

import argparse
import os
import sys

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from m5core.settings import kafka_client_options

# name -> (partitions, config)
DEFAULT_TOPICS = {
    "catalog.changes": (3, {}),
    # delete.retention.ms: how long a compacted-away delete's tombstone stays readable; snapshots older than
    # M5_MAX_SNAPSHOT_AGE_S (12 h) are never replayed from, so a follower cannot miss one
    "catalog.embeddings": (3, {"cleanup.policy": "compact", "delete.retention.ms": "86400000"}),
    "catalog.changes.dlq": (1, {}),
}


def main() -> int:
    ap = argparse.ArgumentParser()
    # The address may carry the broker's password (kafka://user:password@...): from the environment, not argv, which `ps` shows.
    ap.add_argument("--bootstrap", default=os.environ.get("M5_KAFKA_BOOTSTRAP"), help="default $M5_KAFKA_BOOTSTRAP")
    ap.add_argument("--check", action="store_true", help="exit 0 when the broker answers metadata")
    ap.add_argument("--create-defaults", action="store_true")
    args = ap.parse_args()
    try:
        admin = KafkaAdminClient(**kafka_client_options(args.bootstrap), request_timeout_ms=3000, client_id="m5-services")
    except Exception as exc:  # noqa: BLE001 - readiness probe: any failure means not ready
        print(f"kafka not ready: {exc}", file=sys.stderr)
        return 1
    try:
        existing = set(admin.list_topics())
        if args.create_defaults:
            new = [
                NewTopic(name, num_partitions=p, replication_factor=1, topic_configs=cfg)
                for name, (p, cfg) in DEFAULT_TOPICS.items()
                if name not in existing
            ]
            if new:
                try:
                    admin.create_topics(new)
                except TopicAlreadyExistsError:
                    pass
    finally:
        admin.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
