import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses.pairs import PairLoss


class PairBCELoss(PairLoss):
    """Binary cross-entropy on scaled cosine: true pairs -> 1, negatives (shuffled or mined) -> 0."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature
        self.bias = nn.Parameter(torch.tensor(-0.5 / temperature))

    def pair_loss(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        pos = (anchors * positives).sum(-1) / self.temperature + self.bias
        neg = (anchors * negatives).sum(-1) / self.temperature + self.bias
        logits = torch.cat([pos, neg])
        target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        return F.binary_cross_entropy_with_logits(logits, target)
