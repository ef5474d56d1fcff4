import torch
from torch import nn


class TripletLoss(nn.Module):
    """max(0, margin - cos(a, p) + cos(a, n)); n is the mined hard negative or another anchor's positive."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                false_negatives: torch.Tensor | None = None) -> torch.Tensor:
        if negatives is None or len(negatives) != len(anchors):
            negatives = positives.roll(1, dims=0)  # another anchor's positive
            if false_negatives is not None:  # ...unless it is a known positive of this anchor: then skip the row
                keep = ~false_negatives[torch.arange(len(anchors)), (torch.arange(len(anchors)) - 1) % len(anchors)]
                if not bool(keep.any()):
                    return anchors.sum() * 0.0  # every pair was a known positive: nothing to learn from
                anchors, positives, negatives = anchors[keep], positives[keep], negatives[keep]
        pos = (anchors * positives).sum(-1)
        neg = (anchors * negatives).sum(-1)
        return torch.relu(self.margin - pos + neg).mean()
