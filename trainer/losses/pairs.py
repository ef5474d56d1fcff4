import torch
from torch import nn


class PairLoss(nn.Module):
    """A loss over (anchor, positive, one negative) rows; subclasses score the rows in `pair_loss`.

    Without a mined negative per row, a row's negative is the next anchor's positive, and a row whose
    borrowed negative is one of its own known positives (false_negatives, (batch, batch + m)) is dropped.
    """

    def pair_loss(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None, false_negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        if negatives is None or len(negatives) != len(anchors):
            negatives = positives.roll(1, dims=0)
            if false_negatives is not None:
                rows = torch.arange(len(anchors))
                keep = ~false_negatives[rows, (rows - 1) % len(anchors)]
                if not bool(keep.any()):
                    return anchors.sum() * 0.0  # every pair was a known positive: nothing to learn from
                anchors, positives, negatives = anchors[keep], positives[keep], negatives[keep]
        return self.pair_loss(anchors, positives, negatives)
