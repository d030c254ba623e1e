"""What ``Runtime.predict`` returns: a batch of results, one row per image, that also reads as a
sequence of per-image results (``len(p)``, ``p[0]``, ``for r in p``) and, for one image, as that
image's result (``p.label``, ``p.score``): what a camera loop wants without indexing arrays."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from rada_export.errors import RadaError


@dataclass(frozen=True, repr=False)
class ImageResult:
    """One image's result: its most probable class (``index`` in ``classes``, ``label``, ``score``)."""

    position: int  # the image's row in its batch
    index: int  # the predicted class's column in ``classes``
    label: str  # the predicted class's name
    score: float  # its probability
    probabilities: np.ndarray  # K
    logits: np.ndarray  # K
    image_features: np.ndarray  # D, L2-normalised
    classes: list[str]

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable classes, as (name, probability), most probable first."""
        order = np.argsort(-self.probabilities, kind="stable")[:k]
        return [(self.classes[j], float(self.probabilities[j])) for j in order]

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "label": self.label, "score": self.score,
                "probabilities": self.probabilities.tolist(), "classes": self.classes}

    def __repr__(self) -> str:
        return f"ImageResult({self.label!r}, score={self.score:.3f}, index={self.index})"


@dataclass(repr=False)
class Prediction:
    """Batched results; row i belongs to image i. ``p[i]`` (and iteration) gives row i as an
    :class:`ImageResult`; ``p.label``, ``p.score`` and ``p.index`` are those of a one-image prediction."""

    labels: np.ndarray  # N, int: the predicted class's column
    class_names: list[str]  # N, the predicted class of each image
    probabilities: np.ndarray  # N x K
    logits: np.ndarray  # N x K
    image_features: np.ndarray  # N x D, L2-normalised
    classes: list[str]  # the K class names, in column order

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> ImageResult:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"a Prediction is indexed by image position (an integer), not {type(i).__name__}")
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"image {i} out of range: the prediction holds {n} image{'s' if n != 1 else ''}")
        i = int(i) % n
        column = int(self.labels[i])
        return ImageResult(i, column, self.class_names[i], float(self.probabilities[i, column]), self.probabilities[i],
                           self.logits[i], self.image_features[i], self.classes)

    def __iter__(self) -> Iterator[ImageResult]:
        return (self[i] for i in range(len(self)))

    def _single(self, what: str) -> ImageResult:
        if len(self) != 1:
            raise RadaError(f"prediction.{what} is for one image, and this prediction holds {len(self)}",
                            f"use prediction[i].{what} for image i, or iterate: for result in prediction", field=what)
        return self[0]

    @property
    def label(self) -> str:
        """The predicted class of a one-image prediction."""
        return self._single("label").label

    @property
    def score(self) -> float:
        """The predicted class's probability, for a one-image prediction."""
        return self._single("score").score

    @property
    def index(self) -> int:
        """The predicted class's column in ``classes``, for a one-image prediction."""
        return self._single("index").index

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most probable classes of each image, as (name, probability)."""
        order = np.argsort(-self.probabilities, axis=1, kind="stable")[:, :k]
        return [[(self.classes[j], float(self.probabilities[i, j])) for j in row] for i, row in enumerate(order)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.tolist(), "class_names": self.class_names, "classes": self.classes,
            "probabilities": self.probabilities.tolist(), "logits": self.logits.tolist(),
        }

    def __repr__(self) -> str:
        n = len(self)
        shown = ", ".join(f"{r.label!r} {r.score:.3f}" for r in (self[i] for i in range(min(n, 3))))
        more = f", ... {n - 3} more" if n > 3 else ""
        return f"Prediction({n} image{'s' if n != 1 else ''} over {len(self.classes)} classes: {shown}{more})"
