import torch
import torch.nn.functional as F
from torch import nn


class InfoNCELoss(nn.Module):
    """Contrastive loss with in-batch negatives (and optional mined hard negatives as extra columns)."""

    def __init__(self, temperature: float = 0.05):
        super().__init__()
        self.temperature = temperature

    def forward(
        self, anchors: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor | None = None, false_negatives: torch.Tensor | None = None
    ) -> torch.Tensor:
        # anchors, positives: (batch, dim) normalised; negatives: (m, dim)
        # false_negatives: (batch, batch + m) bool, True where a column is another known positive of the row's
        # anchor (a head query's second Exact): pushing it away would teach the model to rank Exacts low.
        cands = positives if negatives is None else torch.cat([positives, negatives])
        logits = anchors @ cands.T / self.temperature  # (batch, batch + m)
        if false_negatives is not None:
            logits = logits.masked_fill(false_negatives, float("-inf"))
        return F.cross_entropy(logits, torch.arange(len(anchors), device=anchors.device))
