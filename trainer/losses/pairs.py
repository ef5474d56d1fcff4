import torch


def one_negative_each(anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None,
                      false_negatives: torch.Tensor | None):
    """(anchors, positives, negatives) with one negative per row for the pair losses, or None.

    Without a mined negative per row, a row's negative is the next anchor's positive, and a row whose
    borrowed negative is one of its own known positives (false_negatives, (batch, batch + m)) is dropped.
    None: every row was dropped, nothing to learn from this batch.
    """
    if negatives is not None and len(negatives) == len(anchors):
        return anchors, positives, negatives
    negatives = positives.roll(1, dims=0)
    if false_negatives is None:
        return anchors, positives, negatives
    rows = torch.arange(len(anchors))
    keep = ~false_negatives[rows, (rows - 1) % len(anchors)]
    if not bool(keep.any()):
        return None
    return anchors[keep], positives[keep], negatives[keep]
