"""One loss per file, each a small nn.Module: scores of true pairs must beat those of negatives."""

from trainer.losses.bce import PairBCELoss
from trainer.losses.infonce import InfoNCELoss
from trainer.losses.triplet import TripletLoss


def make_loss(name: str, temperature: float, margin: float):
    return {"infonce": lambda: InfoNCELoss(temperature), "bce": lambda: PairBCELoss(temperature), "triplet": lambda: TripletLoss(margin)}[name]()


__all__ = ["InfoNCELoss", "PairBCELoss", "TripletLoss", "make_loss"]
