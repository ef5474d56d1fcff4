import torch

from trainer.losses.pairs import PairLoss


class TripletLoss(PairLoss):
    """max(0, margin - cos(a, p) + cos(a, n)); n is the mined hard negative or another anchor's positive."""

    def __init__(self, margin: float = 0.2):
        super().__init__()
        self.margin = margin

    def pair_loss(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        pos = (anchors * positives).sum(-1)
        neg = (anchors * negatives).sum(-1)
        return torch.relu(self.margin - pos + neg).mean()
