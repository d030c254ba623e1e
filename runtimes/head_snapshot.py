"""What one prediction reads from a shared head: weights and class set that belong together."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .head_params import ParamViews


@dataclass(frozen=True)
class HeadSnapshot:
    """The head's weights and class set at one moment.

    None of the arrays is ever written in place after the head publishes it (a change of weights
    or classes makes new arrays and a new snapshot), so a snapshot taken under the head's lock
    stays consistent after the lock is released, whatever other threads do meanwhile.
    """

    params: np.ndarray  # the flat weight vector (see head_params)
    views: ParamViews  # the same weights, per projection
    class_names: tuple[str, ...]  # K, in logit column order
    text_features: np.ndarray  # K x D, L2-normalised, read-only
    text_queries: np.ndarray  # h x K x dh: q_proj2 of the text features, cached with the weights
    adapted: bool  # whether continual adaptation has moved the weights from the deployed ones

    @property
    def num_classes(self) -> int:
        return len(self.class_names)
