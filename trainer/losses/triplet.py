import torch
from torch import nn

from trainer.losses.pairs import one_negative_each


class TripletLoss(nn.Module):
    """max(0, margin - cos(a, p) + cos(a, n)); n is the mined hard negative or another anchor's positive."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                false_negatives: torch.Tensor | None = None) -> torch.Tensor:
        picked = one_negative_each(anchors, positives, negatives, false_negatives)
        if picked is None:
            return anchors.sum() * 0.0  # every pair was a known positive: nothing to learn from
        anchors, positives, negatives = picked
        pos = (anchors * positives).sum(-1)
        neg = (anchors * negatives).sum(-1)
        return torch.relu(self.margin - pos + neg).mean()
