"""The collapse guard of continual adaptation (SAR's model recovery).

Entropy minimisation on a stream can drive the head to predict one class for everything. The guard
watches the last ``collapse_window`` predictions; once the window is full it reports collapse when
one class takes more than its share of them, or (optionally) when their mean entropy falls too low.
"""

from __future__ import annotations

import math

import numpy as np

from .tta import TTAConfig


class CollapseGuard:
    """The last ``size`` continual predictions and their entropies, with a running histogram."""

    def __init__(self, config: TTAConfig, num_classes: int):
        self.config = config
        self.size = config.collapse_window
        self.num_classes = num_classes
        self._predictions = np.zeros(self.size, dtype=np.int64)
        self._entropies = np.zeros(self.size, dtype=np.float64)
        self._counts = np.zeros(num_classes, dtype=np.int64)
        self._position = 0
        self._filled = 0

    def clear(self) -> None:
        self._counts.fill(0)
        self._position = self._filled = 0

    def push(self, prediction: int, ent: float) -> None:
        if self._filled == self.size:
            self._counts[self._predictions[self._position]] -= 1
        else:
            self._filled += 1
        self._predictions[self._position] = prediction
        self._entropies[self._position] = ent
        self._counts[prediction] += 1
        self._position = (self._position + 1) % self.size

    def full(self) -> bool:
        return self._filled == self.size

    def top_share(self) -> float:
        return float(self._counts.max()) / max(1, self._filled)

    def mean_entropy(self) -> float:
        return float(self._entropies[: self._filled].mean()) if self._filled else 0.0

    def observe(self, logits: np.ndarray, ent: np.ndarray, finite: np.ndarray) -> bool:
        """Records the finite rows' predictions; True (and a cleared window) on collapse."""
        predictions = logits.argmax(axis=1)
        for row in np.flatnonzero(finite):
            self.push(int(predictions[row]), float(ent[row]))
        if not self.full():
            return False
        cfg, k = self.config, self.num_classes
        collapsed = self.top_share() > cfg.share_limit(k)
        if cfg.collapse_entropy and k > 1:
            collapsed = collapsed or self.mean_entropy() < cfg.collapse_entropy * math.log(k)
        if collapsed:
            self.clear()
        return collapsed

    def chronological(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of the window's predictions and entropies, oldest first."""
        if self._filled < self.size:
            return self._predictions[: self._filled].copy(), self._entropies[: self._filled].copy()
        order = np.roll(np.arange(self.size), -self._position)
        return self._predictions[order].copy(), self._entropies[order].copy()

    def replay(self, predictions: np.ndarray, entropies: np.ndarray) -> None:
        """Refills a cleared window from chronological() output; predictions of other classes are dropped."""
        for p, e in zip(predictions[-self.size :], entropies[-self.size :]):
            if 0 <= p < self.num_classes:
                self.push(int(p), float(e))
