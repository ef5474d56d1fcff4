"""A commit that meets a rebalance is a CommitRejected: the batch is left to whoever owns the partitions next."""

import pytest
from kafka.errors import CommitFailedError, IllegalGenerationError, RebalanceInProgressError, UnknownMemberIdError

from m5core.events.base import CommitRejected
from m5core.events.kafka import KafkaSource


class _Consumer:
    def __init__(self, exc):
        self.exc = exc

    def commit(self, offsets):
        raise self.exc


@pytest.mark.parametrize("exc", [RebalanceInProgressError(), CommitFailedError(), IllegalGenerationError(), UnknownMemberIdError()])
def test_a_commit_during_a_rebalance_is_rejected_not_retried(exc):
    """kafka-python finishes a rebalance only inside poll(): retrying the commit alone failed five times and
    stopped the indexer (seen in CI). The pipeline returns to poll on CommitRejected and the batch is replayed."""
    src = KafkaSource.__new__(KafkaSource)  # the commit path alone, no broker: the consumer is the stand-in
    src.consumer = _Consumer(exc)
    with pytest.raises(CommitRejected, match=type(exc).__name__):
        src.commit({("t", 0): 5})
