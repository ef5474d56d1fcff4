import torch
import torch.nn.functional as F
from torch import nn

from trainer.losses.pairs import one_negative_each


class PairBCELoss(nn.Module):
    """Binary cross-entropy on scaled cosine: true pairs -> 1, negatives (shuffled or mined) -> 0."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature
        self.bias = nn.Parameter(torch.tensor(-0.5 / temperature))

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None,
                false_negatives: torch.Tensor | None = None) -> torch.Tensor:
        picked = one_negative_each(anchors, positives, negatives, false_negatives)
        if picked is None:
            return anchors.sum() * 0.0  # every pair was a known positive: nothing to learn from
        anchors, positives, negatives = picked
        pos = (anchors * positives).sum(-1) / self.temperature + self.bias
        neg = (anchors * negatives).sum(-1) / self.temperature + self.bias
        logits = torch.cat([pos, neg])
        target = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
        return F.binary_cross_entropy_with_logits(logits, target)
