"""SIMO: strategic image-mask optimisation — train only a small, chosen part of the model.

The config names parameter-name prefixes (by default the mask tokens' own query projections, the
classifier's void embedding and the SEVE adapters); every other parameter — CLIP, the mask generator —
is frozen. FISA's claim is that adapting mask classification this narrowly keeps CLIP's open-vocabulary
knowledge while refocusing it on segmentation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

from torch import nn

from .errors import ConfigError


@dataclass
class SimoReport:
    trainable: int
    total: int
    names: List[str]

    @property
    def percent(self) -> float:
        return 100.0 * self.trainable / max(self.total, 1)

    def __str__(self) -> str:
        return f"trainable {self.trainable:,} of {self.total:,} parameters ({self.percent:.3f}%)"


def select_trainable(model: nn.Module, prefixes: Sequence[str]) -> SimoReport:
    """Freeze every parameter of ``model`` except those whose name starts with one of ``prefixes``."""
    matched = {p: False for p in prefixes}
    names, trainable, total = [], 0, 0
    for name, param in model.named_parameters():
        hits = [p for p in prefixes if name == p or name.startswith(p + ".")]
        for p in hits:
            matched[p] = True
        param.requires_grad_(bool(hits))
        total += param.numel()
        if hits:
            trainable += param.numel()
            names.append(name)
    unmatched = [p for p, hit in matched.items() if not hit]
    if unmatched:
        raise ConfigError(f"simo.trainable prefixes {unmatched} match no parameter of the model")
    return SimoReport(trainable=trainable, total=total, names=names)
