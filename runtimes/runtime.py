"""The device runtime: a bundle in, predictions out, no PyTorch.

Images go through the manifest's preprocessing and the image encoder (ONNX Runtime or TensorRT);
the RAda head runs in numpy, because it is the part that adapts at test time and that takes new
classes. Without adaptation and with the bundle's own classes, the fused graph (encoder and head in
one) is used instead: one call per batch.

What runs is what was verified: ``load_bundle`` pins the bundle's files (runtimes/bundle/verified.py)
and checks the manifest, the head, the text features and the other small files at once; each graph
is hashed when its runner is made, from the very bytes handed to the backend, so a device hashes
only the graphs it runs. The tokenizer is read from verified bytes too, and a bundle replaced at its
path after loading changes nothing here. Every graph's outputs are checked on every run (names,
rows, width, finite values).
"""

from __future__ import annotations

import os
import threading
import zlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from rada_export import validate
from rada_export.errors import RadaError

from . import preprocess as pp
from .augment import random_views
from .backends import BackendChoice, GraphRunner, check_threads, choose_backend, make_runner, parse_device
from .bundle.layout import PRECISIONS as LAYOUT_PRECISIONS
from .bundle.outputs import check_outputs, check_prediction
from .bundle.verified import VerifiedBundle, files_outside_graphs
from .class_names import check_class_names
from .head import Head
from .head_snapshot import HeadSnapshot
from .manifest import FUSED, IMAGE_ENCODER, TEXT_ENCODER, Manifest
from .prediction import Prediction  # also imported from here by older code
from .runtime_stats import RuntimeStats
from .stream import FrameStream, StreamOptions
from .tta import TTAConfig

PRECISIONS = ("auto",) + LAYOUT_PRECISIONS


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Runtime:
    """Predicts with a bundle; see :func:`load_bundle`.

    One runtime may serve many threads (a callback per camera, a ROS executor):

    - Shared: the graph sessions (ONNX Runtime's ``run`` is thread-safe, so predictions without
      adaptation run in parallel and never wait on each other, except for a few microseconds to
      read the current weights), the head's weights, the class list and the counters.
    - Continual adaptation: each call encodes its images in parallel with other threads, then takes
      the head's lock for its update steps, so the updates apply in some serial order, one call's
      frames in a row; every call's result is finite and belongs to its own images.
    - Episodic adaptation: each episode adapts a private copy of the head (per-thread buffers) and
      never changes the shared head; an image's views come from a generator seeded by the
      runtime's seed and the image's pixels, so an image gets the same views, and the same result,
      whichever thread runs it and in whatever order.
    - ``set_classes``, ``reset`` and ``load_state`` take the head's lock: a prediction sees either
      the old or the new class list and weights, never a mix; ``last_episode`` is per thread.
    """

    def __init__(self, bundle: Path | VerifiedBundle, manifest: Manifest, choice: BackendChoice, precision: str,
                 tta: TTAConfig | None, seed: int = 0, host_frame_reduction: bool | None = None):
        # Everything is read from the verified bundle (files pinned at load), never from the path again.
        self.verified = bundle if isinstance(bundle, VerifiedBundle) else VerifiedBundle.open(bundle)
        self.bundle = self.verified.path
        self.manifest = manifest
        self.backend = choice.name
        self.backend_reason = choice.reason
        self.precision = precision
        self.tta = tta
        self.head = Head.from_bundle(self.verified, tta=tta)  # owns the class set: names and text features
        self._choice = choice
        self._encoder: GraphRunner | None = None  # made on first use: a fused-only deployment never loads it
        self._fused: GraphRunner | None = None
        self._text: GraphRunner | None = None
        self._tokenizer = None
        self.requested_precision = precision
        self.precision_note = ""  # set by load_bundle when the bundle lacks the requested precision
        # graph -> the precision that runs it (an engine's, or the ONNX variant); set by load_bundle
        self.precisions: dict[str, str] = {}
        self._frames = 0  # images predicted (stats)
        self._frames_lock = threading.Lock()
        self._seed = seed  # episodic views: seeded per image by (seed, pixels)
        self._make_lock = threading.Lock()  # graph sessions are made once, on first use
        # Camera frames to a graph that resizes them: on a CPU backend the host does the graph's
        # integer box reduction first (preprocess.reduce_for_graph), a GPU takes the frame as it is.
        self.host_frame_reduction = _fused_on_cpu(choice) if host_frame_reduction is None else bool(host_frame_reduction)

    def _variant(self, graph: str) -> str:
        """The precision this graph runs in: what load_bundle resolved, else the requested precision where
        the bundle has it, else FP32."""
        if graph in self.precisions:
            return self.precisions[graph]
        if self.backend == "tensorrt":
            return self.precision
        return self.precision if self.manifest.graph_key(graph, self.precision) in self.manifest.graphs else "fp32"

    @property
    def classes(self) -> list[str]:
        """The current class names, in logit column order."""
        return list(self.head.class_names)

    @property
    def stats(self) -> RuntimeStats:
        """What this runtime has done so far: images predicted, and what adaptation did with them
        (updates, skipped frames, collapse-guard resets). A snapshot; kept across ``reset()``."""
        counters = self.head.counters
        with self._frames_lock:
            frames = self._frames
        return RuntimeStats(frames=frames, updates=counters.updates, skipped_unconfident=counters.skipped_unconfident,
                            skipped_nonfinite=counters.skipped_nonfinite, resets=counters.resets,
                            mode="off" if self.tta is None else self.tta.mode, adapted_frames=counters.frames,
                            episodes=counters.episodes)

    def _count(self, prediction: Prediction) -> Prediction:
        with self._frames_lock:
            self._frames += len(prediction)
        return prediction

    @property
    def description(self) -> str:
        text = f"{self.backend} ({self.backend_reason}), {self.precision}"
        if self._choice.threads is not None:
            text += f", {self._choice.threads} threads"
        if self.manifest.frames is not None:
            where = "box reduction on the host, filter in the graph" if self.host_frame_reduction else "in the graph"
            text += f", camera frames resized {where}"
            plan = self._choice.openvino
            if plan is not None and plan.inference_precision != "f32":  # runtimes/openvino_frames.py
                text += ", the resize in f32"
        return f"{text} ({self.precision_note})" if self.precision_note else text

    # -- prediction ------------------------------------------------------------------------------

    @property
    def channel_order(self) -> str:
        """The channel order raw uint8 frames are taken in when ``predict`` is not told (``bgr=None``):
        the bundle's (``--channel-order`` at export, for bundles that take camera frames), else RGB."""
        return "bgr" if self.manifest.frames is not None and self.manifest.frames.channel_order == "bgr" else "rgb"

    def predict(self, images: Any, *, bgr: bool | None = None, adapt: bool = False, batch_size: int = 32) -> Prediction:
        """Classifies images: paths, PIL images, uint8 H x W x 3 arrays, or a preprocessed float32
        N x 3 x H x W batch. Returns a :class:`Prediction` (``p[i].label``, ``p.label`` for one image).

        ``bgr``: the channel order of uint8 arrays; None (the default) is the bundle's
        (``runtime.channel_order``: BGR for bundles exported with ``--channel-order bgr``, else RGB);
        True or False says it for this call. ``adapt=True`` adapts the head as the runtime's TTA
        config says (continual: the logits returned are those predicted before each update;
        episodic: N views per image, then reset).
        """
        if bgr not in (None, True, False):
            raise RadaError(f"bgr must be True, False or None, got {bgr!r}",
                            "pass None (the bundle's channel order), True (BGR, as OpenCV decodes) or False (RGB)", field="bgr")
        bgr = self.channel_order == "bgr" if bgr is None else bool(bgr)
        return self._count(self._predict(images, bgr, adapt, batch_size))

    def _predict(self, images: Any, bgr: bool, adapt: bool, batch_size: int) -> Prediction:
        if adapt and self.tta is None:
            raise RadaError("predict(adapt=True) needs test-time adaptation settings",
                            "load the bundle with tta=TTAConfig(mode='continual') or TTAConfig(mode='episodic')")
        validate.integer("batch_size", batch_size, 1)
        if adapt and self.tta.mode == "episodic":
            return self._predict_episodic(images, bgr)
        if not adapt and self._takes_raw_frames(images):
            snapshot = self.head.snapshot()
            if self._use_fused(snapshot):
                return self._predict_frames(images, bgr, batch_size, list(snapshot.class_names))
        items = self._as_items(images)
        batches = [items[i : i + batch_size] for i in range(0, len(items), batch_size)]
        if adapt:
            # Continual: encode outside the lock (in parallel with other threads), then this call's
            # update steps in one critical section, with the class list they belong to.
            features = [self._features_of(batch, bgr) for batch in batches]
            logits, classes = self.head.adapt_batches(features)
            return self._prediction(logits, np.concatenate(features), list(classes))
        snapshot = self.head.snapshot()  # class names, text features and weights that belong together
        fused = self._use_fused(snapshot)
        chunks = [self._predict_chunk(batch, bgr, fused, snapshot) for batch in batches]
        logits = np.concatenate([c[0] for c in chunks])
        features = np.concatenate([c[1] for c in chunks])
        return self._prediction(logits, features, list(snapshot.class_names))

    def stream(self, source: Any, *, stride: int = 1, max_frames: int | None = None, adapt: bool = False,
               timeout_s: float = 10.0, live: bool | None = None, queue_size: int | None = None) -> FrameStream:
        """Predicts the frames of a video file, camera, stream URL or GStreamer pipeline as they come.

        ``source``: a path, a camera index (``0`` or ``"0"``), a URL (``rtsp://...``), a pipeline ending
        in ``appsink`` (text holding ``!``), or an object with ``read() -> (ok, frame)`` like
        ``cv2.VideoCapture``. Returns an iterator of ``StreamFrame`` (``index``, ``timestamp_ms``,
        ``prediction``, ``dropped``, ``image``), decoded in a thread that overlaps inference (see
        runtimes/stream.py): files lose no frame; live sources keep the newest and count the dropped
        ones (``live`` overrides which is which, ``queue_size`` the frames decoded ahead).
        ``stride``: every n-th frame; ``max_frames``: stop after that many predictions; ``adapt``: as in
        ``predict``, frame after frame; ``timeout_s``: the longest wait for a frame before a RadaError.
        Needs OpenCV (the ``video`` extra).
        """
        options = StreamOptions(stride=stride, max_frames=max_frames, timeout_s=timeout_s, queue_size=queue_size)
        return FrameStream(self, source, options, adapt=adapt, live=live)

    def _as_items(self, images: Any) -> list[Any] | np.ndarray:
        if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
            return pp.preprocess(images, self.manifest.preprocess)  # validates shape and finiteness
        if isinstance(images, np.ndarray) and images.dtype == np.uint8 and images.ndim == 4:
            return pp.image_list(images)
        if isinstance(images, (list, tuple)):
            if not images:
                raise RadaError("expected at least one image, got an empty list", "pass one image or a non-empty list of images")
            return list(images)
        if isinstance(images, np.ndarray) and not (images.dtype == np.uint8 and images.ndim in (2, 3)):
            raise RadaError(f"expected uint8 H x W x 3 images or a float32 N x 3 x H x W batch, got an array of "
                            f"shape {images.shape} and dtype {images.dtype}", "cast images to uint8, or preprocess them to float32")
        return [images]

    def _takes_raw_frames(self, images: Any) -> bool:
        """A uint8 array for a fused graph that resizes frames itself (bundles with a ``frames`` section)."""
        return self.manifest.frames is not None and isinstance(images, np.ndarray) and images.dtype == np.uint8

    def _predict_frames(self, images: np.ndarray, bgr: bool, batch_size: int, classes: list[str]) -> Prediction:
        """The frame goes to the graph as it is (see preprocess.graph_frames): O(1) Python work per call;
        on a CPU backend box-reduced first by the graph's own integer factor (preprocess.reduce_for_graph)."""
        frames = pp.graph_frames(images, self.manifest.frames, bgr)
        if self.host_frame_reduction:
            frames = pp.reduce_for_graph(frames, self.manifest.preprocess, self.manifest.frames)
        runner = self.fused_runner()
        name = runner.input_names[0]
        outs = [self._run(runner, FUSED, {name: frames[i : i + batch_size]}, classes) for i in range(0, len(frames), batch_size)]
        if len(outs) == 1:
            return self._prediction(outs[0]["logits"], outs[0]["image_features"], classes)
        return self._prediction(np.concatenate([o["logits"] for o in outs]),
                                np.concatenate([o["image_features"] for o in outs]), classes)

    def _use_fused(self, snapshot: HeadSnapshot) -> bool:
        return (not snapshot.adapted and list(snapshot.class_names) == list(self.manifest.class_names)
                and self.manifest.graph_key(FUSED, self._variant(FUSED)) in self.manifest.graphs)

    def fused_runner(self) -> GraphRunner:
        """The fused graph's runner (made on first use), which ``predict`` calls for the bundle's own
        classes; timing its ``run`` apart from ``predict`` splits graph time from host work."""
        if self._fused is None:
            with self._make_lock:
                if self._fused is None:
                    self._fused = make_runner(self._choice, self.verified, self.manifest, FUSED, self._variant(FUSED))
        return self._fused

    def _features_of(self, items, bgr: bool) -> np.ndarray:
        preprocessed = isinstance(items, np.ndarray)
        return self.encode(items if preprocessed else pp.preprocess(items, self.manifest.preprocess, bgr, fast=True))

    def _predict_chunk(self, items, bgr: bool, fused: bool, snapshot: HeadSnapshot) -> tuple[np.ndarray, np.ndarray]:
        preprocessed = isinstance(items, np.ndarray)
        if fused and not (preprocessed and self.manifest.embed_preprocess):
            runner = self.fused_runner()
            if self.manifest.embed_preprocess:
                feed = pp.frames_uint8(items, self.manifest.preprocess, bgr, fast=True)  # RGB at the model's size
                if self.manifest.frames is not None and self.manifest.frames.channel_order == "bgr":
                    feed = np.ascontiguousarray(feed[..., ::-1])
            else:
                feed = items if preprocessed else pp.preprocess(items, self.manifest.preprocess, bgr, fast=True)
            out = self._run(runner, FUSED, {runner.input_names[0]: feed}, snapshot.class_names)
            return out["logits"], out["image_features"]
        features = self._features_of(items, bgr)
        return self.head.logits(features, snapshot=snapshot), features

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Image features (N x D, L2-normalised) of a preprocessed float32 batch."""
        if self._encoder is None:
            with self._make_lock:
                if self._encoder is None:
                    self._encoder = make_runner(self._choice, self.verified, self.manifest, IMAGE_ENCODER,
                                                self._variant(IMAGE_ENCODER))
        out = self._run(self._encoder, IMAGE_ENCODER, {"pixels": np.ascontiguousarray(pixels, dtype=np.float32)})
        return out["image_features"]

    def _run(self, runner: GraphRunner, graph: str, feeds: dict[str, np.ndarray], classes: Sequence[str] = ()) -> dict:
        """One graph run, its outputs checked: the names the graph must return, one row per input row,
        one logit column per class, embed_dim features, finite values."""
        out = runner.run(feeds)
        rows = len(next(iter(feeds.values())))
        check_outputs(graph, out, rows, len(classes), self.manifest.embed_dim, getattr(runner, "path", graph))
        return out

    def _predict_episodic(self, images: Any, bgr: bool) -> Prediction:
        if isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating):
            raise RadaError("episodic TTA makes augmented views of each image, which a preprocessed batch cannot give",
                            "pass the images themselves (paths, PIL images or uint8 arrays)")
        items = self._as_items(images)
        snapshot = self.head.snapshot()  # one class set and starting head for the whole call
        logits, features = [], []
        for item in items:
            image = pp.to_pil(item, bgr)
            views = random_views(image, self.tta.views, self._view_rng(image))
            feats = self.encode(pp.preprocess(views, self.manifest.preprocess))
            logits.append(np.atleast_2d(self.head.adapt_episodic(feats, snapshot=snapshot)))
            features.append(feats[:1])
        return self._prediction(np.concatenate(logits), np.concatenate(features), list(snapshot.class_names))

    def _view_rng(self, image) -> np.random.Generator:
        """The generator of an image's episodic views: a function of the seed and the pixels only, so
        that results do not depend on which thread, or which call, handles the image."""
        digest = zlib.crc32(image.tobytes(), zlib.crc32(f"{image.mode}{image.size}".encode()))
        return np.random.default_rng([self._seed, digest])

    def _prediction(self, logits: np.ndarray, features: np.ndarray, classes: list[str]) -> Prediction:
        logits = np.asarray(logits, dtype=np.float32)
        check_prediction(logits, features, len(classes))
        labels = logits.argmax(axis=1)
        return Prediction(labels=labels, class_names=[classes[i] for i in labels], probabilities=self._probabilities(logits),
                          logits=logits, image_features=np.asarray(features, dtype=np.float32), classes=classes)

    def _probabilities(self, logits: np.ndarray) -> np.ndarray:
        # SigLIP scores each class on its own: sigmoid(logit + learned bias), not a softmax over classes.
        if self.manifest.probability == "sigmoid":
            return 1.0 / (1.0 + np.exp(-(logits + (self.manifest.logit_bias or 0.0))))
        return softmax(logits)

    # -- classes ---------------------------------------------------------------------------------

    def set_classes(self, names: Sequence[str], templates: Sequence[str] | None = None) -> None:
        """New classes on the device: prompts through the tokenizer and the text encoder graph."""
        names = _check_names(names)
        validate.class_count(len(names), self.head.spec.num_heads)  # before any text-encoder work
        templates = validate.templates(templates, self.manifest.templates)
        self.head.set_classes(names, self.text_features(names, templates))  # predictions see the old set or the new one

    def text_features(self, names: Sequence[str], templates: Sequence[str]) -> np.ndarray:
        with self._make_lock:
            if self._tokenizer is None:
                from .tokenizer import load_tokenizer

                self._tokenizer = load_tokenizer(self.verified, self.manifest.tokenizer)
            if self._text is None:
                self._text = make_runner(self._choice, self.verified, self.manifest, TEXT_ENCODER, "fp32")
        prompts = [t.format(n) for n in names for t in templates]
        tokens = self._tokenizer(prompts).astype(np.int64)
        _check_token_width(self.manifest, tokens.shape[1])
        validate.distinct_prompts(names, tokens, len(templates), tokens.shape[1])
        chunks = [self._run(self._text, TEXT_ENCODER, {"token_ids": tokens[i : i + 256]})["text_features"]
                  for i in range(0, len(tokens), 256)]
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


def _fused_on_cpu(choice: BackendChoice) -> bool:
    """Whether the fused graph runs on a CPU backend (ONNX Runtime CPU or OpenVINO), not a GPU."""
    if FUSED in choice.engines or choice.name == "tensorrt":
        return False
    return choice.openvino is not None or (choice.onnxruntime or choice.name) == "onnxruntime-cpu"


def _check_token_width(manifest: Manifest, width: int) -> None:
    """The tokenizer's rows against the text graph's fixed token axis (a mismatch would fail inside the backend)."""
    entry = manifest.graphs.get(TEXT_ENCODER)
    dims = entry.inputs.get("token_ids", []) if entry is not None else []
    if len(dims) == 2 and isinstance(dims[1], int) and dims[1] != width:
        raise RadaError(f"the bundle's tokenizer makes rows of {width} tokens, but its text graph takes {dims[1]}",
                        "re-export the bundle with `rada-export onnx`")


def _check_names(names: Sequence[str]) -> list[str]:
    """The one class-name check (runtimes/class_names.py), as for the exporter and the manifest."""
    return check_class_names(names, minimum=2, field="classes")


def load_bundle(path: str | os.PathLike, backend: str = "auto", device: str = "auto", tta: TTAConfig | None = None,
                precision: str = "auto", seed: int = 0, host_frame_reduction: bool | None = None,
                threads: int | None = None) -> Runtime:
    """Loads a bundle for prediction; what it runs is what it verified.

    The manifest, the head, the text features and the bundle's other small files are checked at
    once; each graph is hashed when its runner is made (the first prediction that needs it), from
    the bytes then handed to the backend, so a graph the device never runs is never read.

    ``backend``: ``auto`` (a TensorRT engine for this GPU, else ONNX Runtime on CUDA, else OpenVINO on
    the CPU where it is installed, else ONNX Runtime on the CPU), ``onnxruntime``, ``openvino`` or
    ``tensorrt``. ``device``: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (ONNX Runtime's CUDA device;
    TensorRT runs on GPU 0). ``precision`` picks the graph variant (fp32, fp16, int8) where the bundle
    has it; ``auto``, the default, takes per graph the best TensorRT engine that fits (INT8 where its
    parity passed, then FP16, then FP32) and runs the other graphs in FP32 (a bundle packed without
    FP32 graphs: in the precision it has), which OpenVINO computes in bf16 where the CPU does so
    natively (``fp32`` forces full precision there). ``runtime.precision`` is what runs, ``auto``
    resolved; ``runtime.precisions`` says it per graph. ``threads``: ONNX Runtime's intra-op threads
    and OpenVINO's inference threads (None: the backend's default, every core). ``seed`` seeds
    episodic TTA's views. The choice made is in ``runtime.backend`` and ``runtime.description``.
    ``host_frame_reduction``: for bundles that resize camera frames in the graph (``--embed-preprocess``),
    whether the host does the graph's integer box reduction first (OpenCV); ``None``: on CPU backends
    only. Features stay those of the graph alone to within uint8 rounding (docs/runtime.md).
    """
    if precision not in PRECISIONS:
        raise RadaError(f"unknown precision {precision!r}", f"use one of {', '.join(PRECISIONS)}")
    if host_frame_reduction not in (None, True, False):
        raise RadaError(f"host_frame_reduction must be True, False or None, got {host_frame_reduction!r}",
                        "pass None (on CPU backends only), True or False", field="host_frame_reduction")
    if tta is not None and not isinstance(tta, TTAConfig):
        raise RadaError(f"tta must be a TTAConfig or None, got {type(tta).__name__}", "pass TTAConfig(mode='continual')")
    parse_device(device)
    check_threads(threads)
    # The manifest read once (types, bounds, every path confined), every file it lists pinned open;
    # the small files checked now, each graph's bytes when its runner is made (backends.ort_runner).
    verified = VerifiedBundle.open(Path(path), check_graphs=False)
    verified.verify(only=files_outside_graphs(verified.manifest))
    manifest = verified.manifest
    choice = choose_backend(verified.path, manifest, backend, device, precision, threads)
    precisions, ran, note = resolve_precisions(manifest, choice, precision)
    runtime = Runtime(verified, manifest, choice, ran, tta, seed, host_frame_reduction)
    runtime.requested_precision = precision
    runtime.precisions = precisions
    runtime.precision_note = note
    return runtime


# Under precision "auto", a graph without an engine runs its FP32 variant; a bundle packed without one
# (``rada-export pack --precision fp16``) runs the first of these it has.
AUTO_FALLBACK = ("fp32", "fp16", "int8")


def resolve_precisions(manifest: Manifest, choice: BackendChoice, precision: str) -> tuple[dict[str, str], str, str]:
    """Per graph, the precision that runs it; the headline precision (the fused graph's, else the image
    encoder's: what ``predict`` runs first); and a note when that is not what was asked for.

    A graph with a TensorRT engine runs the engine's precision; the others run the requested ONNX
    variant where the bundle has it, else FP32 (ONNX Runtime's fallback, said in the note).
    """
    have = {key.partition(".")[0] for key in manifest.graphs}
    precisions: dict[str, str] = {}
    for graph in (FUSED, IMAGE_ENCODER, TEXT_ENCODER):
        if graph not in have:
            continue
        if graph in choice.engine_precisions:
            precisions[graph] = choice.engine_precisions[graph]
        elif choice.name == "tensorrt":  # an explicit TensorRT-only choice: the engine asked for (make_runner)
            precisions[graph] = "fp32" if precision == "auto" else precision
        else:
            wanted = (("fp32",) if graph == TEXT_ENCODER else AUTO_FALLBACK) if precision == "auto" else (precision,) + AUTO_FALLBACK
            precisions[graph] = next(p for p in wanted if manifest.graph_key(graph, p) in manifest.graphs or
                                     (graph == TEXT_ENCODER and p == "fp32"))
    image_graphs = [g for g in (FUSED, IMAGE_ENCODER) if g in precisions]
    headline = precisions[image_graphs[0]] if image_graphs else ("fp32" if precision == "auto" else precision)
    if precision == "auto" or choice.name == "tensorrt":
        return precisions, headline, ""
    missed = [g for g in image_graphs if precisions[g] != precision]
    if missed and len(missed) == len(image_graphs):
        ran = precisions[image_graphs[0]].upper()
        return precisions, headline, f"{precision} requested, but the bundle has no {precision} graph: {ran} ran"
    if missed:
        return precisions, precision, "; ".join(f"{g} has no {precision} graph and runs in {precisions[g].upper()}"
                                                for g in missed)
    return precisions, headline, ""
