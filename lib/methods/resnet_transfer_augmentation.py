"""p4 — Ali, Raza, Gan: transfer augmentation, the algorithm only.

A source model's FGSM examples of the whole training set, at every eps, pooled with the clean images and
balanced by class: the training set on which the target models are retrained (with conventional
augmentation, :mod:`lib.augment`, applied by the training loop).
"""

from __future__ import annotations

import torch

import lib.data as D
from lib import attacks as A
from lib.evaluate import adversarial_examples


def adversarial_training_set(
    source: torch.nn.Module, train_split: D.Split, eps: list[float], seed: int, source_name: str
) -> D.Split:
    """The clean training split plus ``source``'s FGSM examples of it at each eps, classes balanced by
    undersampling (seeded)."""
    x, y = D.tensors(train_split)
    xs = [x] + [adversarial_examples(source, x, y, A.fgsm, eps=e, desc=f"FGSM {e:g} on {source_name}") for e in eps]
    return D.Split(*D.undersample(torch.cat(xs), y.repeat(len(xs)), seed))
