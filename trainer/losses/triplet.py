import torch
from torch import nn


class TripletLoss(nn.Module):
    """max(0, margin - cos(a, p) + cos(a, n)); n is the mined hard negative or another anchor's positive."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None) -> torch.Tensor:
        if negatives is None or len(negatives) != len(anchors):
            negatives = positives.roll(1, dims=0)
        pos = (anchors * positives).sum(-1)
        neg = (anchors * negatives).sum(-1)
        return torch.relu(self.margin - pos + neg).mean()
