"""The device runtime: a bundle in, predictions out, no PyTorch.

Images go through the manifest's preprocessing and the image encoder (ONNX Runtime or TensorRT);
the RAda head runs in numpy, because it is the part that adapts at test time and that takes new
classes. Without adaptation and with the bundle's own classes, the fused graph (encoder and head in
one) is used instead: one call per batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rada_export.errors import RadaError

from . import preprocess as pp
from .augment import random_views
from .backends import BackendChoice, GraphRunner, choose_backend, make_runner
from .head import Head
from .manifest import FUSED, IMAGE_ENCODER, TEXT_ENCODER, Manifest, read_manifest, verify_checksums
from .tta import TTAConfig

PRECISIONS = ("fp32", "fp16", "int8")


@dataclass
class Prediction:
    """Batched results; row i belongs to image i."""

    labels: np.ndarray  # N, int
    class_names: list[str]  # N, the predicted class of each image
    probabilities: np.ndarray  # N x K
    logits: np.ndarray  # N x K
    image_features: np.ndarray  # N x D, L2-normalised
    classes: list[str]  # the K class names, in column order

    def top(self, k: int = 5) -> list[list[tuple[str, float]]]:
        """The k most probable classes of each image, as (name, probability)."""
        order = np.argsort(-self.probabilities, axis=1)[:, :k]
        return [[(self.classes[j], float(self.probabilities[i, j])) for j in row] for i, row in enumerate(order)]

    def to_dict(self) -> dict[str, Any]:
        return {
            "labels": self.labels.tolist(), "class_names": self.class_names, "classes": self.classes,
            "probabilities": self.probabilities.tolist(), "logits": self.logits.tolist(),
        }


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Runtime:
    """Predicts with a bundle; see :func:`load_bundle`."""

    def __init__(self, bundle: Path, manifest: Manifest, choice: BackendChoice, precision: str, tta: TTAConfig | None,
                 seed: int = 0):
        self.bundle = bundle
        self.manifest = manifest
        self.backend = choice.name
        self.backend_reason = choice.reason
        self.precision = precision
        self.tta = tta
        self.head = Head.from_bundle(bundle, tta=tta)
        self.classes = list(manifest.class_names)
        self._choice = choice
        self._encoder: GraphRunner | None = None  # made on first use: a fused-only deployment never loads it
        self._fused: GraphRunner | None = None
        self._text: GraphRunner | None = None
        self._tokenizer = None
        self._rng = np.random.default_rng(seed)  # episodic views

    def _variant(self, graph: str) -> str:
        """The requested precision when the bundle (or engine folder) has it for this graph, else FP32."""
        if self.backend == "tensorrt":
            return self.precision
        return self.precision if self.manifest.graph_key(graph, self.precision) in self.manifest.graphs else "fp32"

    @property
    def description(self) -> str:
        return f"{self.backend} ({self.backend_reason}), {self.precision}"

    # -- prediction ------------------------------------------------------------------------------

    def predict(self, images: Any, *, bgr: bool = False, adapt: bool = False, batch_size: int = 32) -> Prediction:
        """Classifies images: paths, PIL images, uint8 H x W x 3 arrays (RGB, or BGR with bgr=True), or
        a preprocessed float32 N x 3 x H x W batch.

        ``adapt=True`` adapts the head as the runtime's TTA config says (continual: the logits
        returned are those predicted before each update; episodic: N views per image, then reset).
        """
        if adapt and self.tta is None:
            raise RadaError("predict(adapt=True) needs test-time adaptation settings",
                            "load the bundle with tta=TTAConfig(mode='continual') or TTAConfig(mode='episodic')")
        if batch_size < 1:
            raise RadaError(f"batch_size must be positive, got {batch_size}", "use batch_size=32")
        if adapt and self.tta.mode == "episodic":
            return self._predict_episodic(images, bgr)
        items = self._as_items(images)
        chunks = [self._predict_chunk(items[i : i + batch_size], bgr, adapt) for i in range(0, len(items), batch_size)]
        logits = np.concatenate([c[0] for c in chunks])
        features = np.concatenate([c[1] for c in chunks])
        return self._prediction(logits, features)

    def _as_items(self, images: Any) -> list[Any] | np.ndarray:
        if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
            return pp.preprocess(images, self.manifest.preprocess)  # validates shape and finiteness
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
            return list(images) if len(images) else pp._items(images)
        if isinstance(images, (list, tuple)):
            if not images:
                raise RadaError("expected at least one image, got an empty list", "pass one image or a non-empty list of images")
            return list(images)
        if isinstance(images, np.ndarray) and not (images.dtype == np.uint8 and images.ndim in (2, 3)):
            raise RadaError(f"expected uint8 H x W x 3 images or a float32 N x 3 x H x W batch, got an array of "
                            f"shape {images.shape} and dtype {images.dtype}", "cast images to uint8, or preprocess them to float32")
        return [images]

    def _use_fused(self, adapt: bool) -> bool:
        return (not adapt and not self.head.adapted and self.classes == list(self.manifest.class_names)
                and self.manifest.graph_key(FUSED, self._variant(FUSED)) in self.manifest.graphs)

    def _fused_runner(self) -> GraphRunner:
        if self._fused is None:
            self._fused = make_runner(self._choice, self.bundle, self.manifest, FUSED, self._variant(FUSED))
        return self._fused

    def _predict_chunk(self, items, bgr: bool, adapt: bool) -> tuple[np.ndarray, np.ndarray]:
        preprocessed = isinstance(items, np.ndarray)
        if self._use_fused(adapt) and not (preprocessed and self.manifest.embed_preprocess):
            runner = self._fused_runner()
            if self.manifest.embed_preprocess:
                feed = pp.frames_uint8(items, self.manifest.preprocess, bgr)
            else:
                feed = items if preprocessed else pp.preprocess(items, self.manifest.preprocess, bgr)
            out = runner.run({runner.input_names[0]: feed})
            return out["logits"], out["image_features"]
        pixels = items if preprocessed else pp.preprocess(items, self.manifest.preprocess, bgr)
        features = self.encode(pixels)
        logits = self.head.adapt(features) if adapt else self.head.logits(features)
        return logits, features

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Image features (N x D, L2-normalised) of a preprocessed float32 batch."""
        if self._encoder is None:
            self._encoder = make_runner(self._choice, self.bundle, self.manifest, IMAGE_ENCODER, self._variant(IMAGE_ENCODER))
        out = self._encoder.run({"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return out["image_features"]

    def _predict_episodic(self, images: Any, bgr: bool) -> Prediction:
        if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
            raise RadaError("episodic TTA makes augmented views of each image, which a preprocessed batch cannot give",
                            "pass the images themselves (paths, PIL images or uint8 arrays)")
        items = self._as_items(images)
        logits, features = [], []
        for item in items:
            image = pp.to_pil(item, bgr)
            views = random_views(image, self.tta.views, self._rng)
            feats = self.encode(pp.preprocess(views, self.manifest.preprocess))
            logits.append(np.atleast_2d(self.head.adapt_episodic(feats)))
            features.append(feats[:1])
        return self._prediction(np.concatenate(logits), np.concatenate(features))

    def _prediction(self, logits: np.ndarray, features: np.ndarray) -> Prediction:
        logits = np.asarray(logits, dtype=np.float32)
        labels = logits.argmax(axis=1)
        return Prediction(labels=labels, class_names=[self.classes[i] for i in labels], probabilities=self._probabilities(logits),
                          logits=logits, image_features=np.asarray(features, dtype=np.float32), classes=list(self.classes))

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        # SigLIP scores each class on its own: sigmoid(logit + learned bias), not a softmax over classes.
        if self.manifest.probability == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(logits + (self.manifest.logit_bias or 0.0))))
        return softmax(logits)

    # -- classes ---------------------------------------------------------------------------------

    def set_classes(self, names: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """New classes on the device: prompts through the tokenizer and the text encoder graph."""
        names = _check_names(names)
        templates = list(templates) if templates else list(self.manifest.templates)
        if any("{}" not in t for t in templates):
            raise RadaError(f"prompt templates need a '{{}}' placeholder: {templates}", "write templates like 'a photo of a {}.'")
        text = self.text_features(names, templates)
        self.head.set_text_features(text)
        self.classes = names

    def text_features(self, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        if self._tokenizer is None:
            from .tokenizer import load_tokenizer

            self._tokenizer = load_tokenizer(self.bundle, self.manifest.tokenizer)
        if self._text is None:
            self._text = make_runner(self._choice, self.bundle, self.manifest, TEXT_ENCODER, "fp32")
        prompts = [t.format(n) for n in names for t in templates]
        tokens = self._tokenizer(prompts).astype(np.int64)
        chunks = [self._text.run({"token_ids": tokens[i : i + 256]})["text_features"] for i in range(0, len(tokens), 256)]
        per_prompt = np.concatenate(chunks).reshape(len(names), len(templates), -1)
        mean = per_prompt.mean(axis=1)
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)

    # -- adaptation state --------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the deployed head (classes are kept)."""
        self.head.reset()

    def state(self) -> dict:
        return self.head.state()

    def load_state(self, state: dict) -> None:
        self.head.load_state(state)


def _check_names(names: Sequence[str]) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = [str(n).strip() for n in names]
    if not names or not all(names):
        raise RadaError("the class list is empty or holds an empty name", "pass at least one non-empty class name")
    lowered = [n.lower() for n in names]
    dupes = sorted({n for n in names if lowered.count(n.lower()) > 1})
    if dupes:
        raise RadaError(f"duplicate class names: {', '.join(dupes)}", "each class must appear once")
    return names


def load_bundle(path: str | os.PathLike, backend: str = "auto", device: str = "auto", tta: TTAConfig | None = None,
                precision: str = "fp32", seed: int = 0) -> Runtime:
    """Loads a bundle for prediction after checking every file's checksum.

    ``backend``: ``auto`` (a TensorRT engine for this GPU, else ONNX Runtime on CUDA, else on the
    CPU), ``onnxruntime`` or ``tensorrt``. ``precision`` picks the graph variant (fp32, fp16, int8)
    where the bundle has it; ``seed`` seeds episodic TTA's views. The choice made is in ``runtime.backend`` and ``runtime.description``.
    """
    bundle = Path(path)
    manifest = read_manifest(bundle)
    verify_checksums(bundle, manifest)
    if precision not in PRECISIONS:
        raise RadaError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if tta is not None and not isinstance(tta, TTAConfig):
        raise RadaError(f"tta must be a TTAConfig or None, got {type(tta).__name__}", "pass TTAConfig(mode='continual')")
    choice = choose_backend(bundle, manifest, backend, device, precision)
    return Runtime(bundle, manifest, choice, precision, tta, seed)
