"""The RAda head on the device: logits, its class set, and test-time adaptation, in numpy (no torch).

``Head`` ties together modules that each do one job: ``head_params`` (the flat weight vector and
the checks on inputs), ``head_math`` (forward and analytic backward), ``losses``, ``adamw``, the two
adaptation policies ``continual`` (with ``collapse_guard``) and ``episodic``, ``head_state``
(saving and loading adapted state) and ``head_bundle`` (reading a bundle). What threads share, the
weights, the class set and the counters, belongs to the head and changes only under its lock.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

from rada_export.errors import RadaError

from . import head_math
from .class_names import check_class_names
from .continual import ContinualAdapter
from .episodic import EpisodeReport, EpisodicAdapter
from .head_bundle import HEAD_FILE, TEXT_FEATURES_FILE, read_head_bundle
from .head_params import (
    PARAMETER_NAMES,
    PROJECTIONS,
    HeadSpec,
    check_matrix,
    check_weights,
    fingerprint,
    flatten_params,
    make_spec,
    param_views,
    unflatten_params,
)
from .head_snapshot import HeadSnapshot
from .head_state import HeadState, state_from_dict, state_to_dict
from .tta import Counters, TTAConfig

__all__ = [
    "HEAD_FILE", "PARAMETER_NAMES", "PROJECTIONS", "TEXT_FEATURES_FILE",
    "Counters", "EpisodeReport", "Head", "HeadSnapshot", "HeadSpec",
]


class Head:
    """The RAda head on the device: logits, and test-time adaptation of its six projections.

    ``features`` are image features, B x D, L2-normalised (as the encoder engines give them);
    text features are K x D, L2-normalised. Any floating dtype is accepted; compute is float32.
    Bad input raises a RadaError and leaves the head as it was.

    The head owns its class set: K class names and their K x D text features, which change together
    (``set_classes``). ``snapshot()`` returns the weights and the class set that belong together at
    one moment; pass it to ``logits`` or ``adapt_episodic`` to have several calls see the same head.

    Threads may share a head. Continual adaptation, class changes, reset and load_state take a
    lock, so continual updates apply in some serial order. The weights are copy-on-write: an
    update makes a new weight vector, so logits() reads one consistent set of weights without
    waiting for the lock (beyond taking a snapshot). Each episodic episode adapts a private copy
    of the weights in buffers of its own thread and never changes the shared head; the counters
    are shared, ``last_episode`` is per thread.
    """

    def __init__(
        self,
        weights: Mapping[str, np.ndarray],
        text_features: np.ndarray,
        *,
        logit_scale: float,
        num_heads: int = 8,
        temperature: float = 1.0,
        tta: Optional[TTAConfig] = None,
        class_names: Optional[Sequence[str]] = None,
    ):
        arrays, dim = check_weights(weights)
        self.spec = make_spec(dim, num_heads, temperature, logit_scale)
        if tta is None:
            tta = TTAConfig()
        elif not isinstance(tta, TTAConfig):
            raise RadaError(f"tta must be a TTAConfig, got {type(tta).__name__}", "pass TTAConfig(...) or None")
        self._tta = tta
        text = _text_features(text_features, dim)
        self._names = _class_names(class_names, text.shape[0])
        self._text = text
        self._deployed = flatten_params(arrays, dim)
        self._deployed.setflags(write=False)
        self._deployed_sha256 = fingerprint(self._deployed)
        self._lock = threading.RLock()
        self.counters = Counters()
        self._params = self._deployed.copy()
        self._views = param_views(self._params, dim)
        self._current: Optional[HeadSnapshot] = None  # made on demand; dropped whenever anything in it changes
        self._continual = ContinualAdapter(self.spec, tta, self._deployed, self.counters, text.shape[0])
        self._episodic = EpisodicAdapter(self.spec, tta, self.counters, self._lock)

    @classmethod
    def from_bundle(cls, path: Union[str, os.PathLike], *, tta: Optional[TTAConfig] = None) -> "Head":
        """The head of a bundle, with the bundle's classes (names and text features).

        ``head.safetensors`` and ``text_features.npy`` are checked against the manifest's checksums
        when it lists them.
        """
        bundle = read_head_bundle(path)
        config = bundle.config
        head = cls(
            bundle.weights,
            bundle.text_features,
            logit_scale=config.logit_scale,
            num_heads=config.num_heads,
            temperature=config.temperature,
            tta=tta,
            class_names=bundle.class_names,
        )
        if head.embed_dim != config.embed_dim:
            raise RadaError(
                f"bundle head weights are {head.embed_dim}-d but its manifest says {config.embed_dim}",
                "re-export the bundle",
            )
        return head

    # -- properties ---------------------------------------------------------------------------

    @property
    def tta(self) -> TTAConfig:
        """The adaptation settings, fixed for the head's life (pass others to a new head)."""
        return self._tta

    @property
    def embed_dim(self) -> int:
        return self.spec.embed_dim

    @property
    def num_classes(self) -> int:
        return len(self._names)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self._names

    @property
    def text_features(self) -> np.ndarray:
        return self._text.copy()

    @property
    def adapted(self) -> bool:
        """True while continual adaptation has the weights away from the deployed ones."""
        return self._continual.adapted

    @property
    def frames(self) -> int:
        return self.counters.frames

    @property
    def updates(self) -> int:
        return self.counters.updates

    @property
    def skipped_nonfinite(self) -> int:
        return self.counters.skipped_nonfinite

    @property
    def skipped_unconfident(self) -> int:
        return self.counters.skipped_unconfident

    @property
    def resets(self) -> int:
        return self.counters.resets

    @property
    def last_episode(self) -> Optional[EpisodeReport]:
        """This thread's last adapt_episodic() episode: which views were kept, loss before and after."""
        return self._episodic.last_episode

    @property
    def pending_frames(self) -> int:
        """Confident frames gathered for the next continual step."""
        return self._continual.pending.rows

    def weights(self, deployed: bool = False) -> dict[str, np.ndarray]:
        """A copy of the current (or the deployed) weights under their nn.Linear names."""
        return unflatten_params(self._deployed if deployed else self._params, self.embed_dim)  # never written in place

    # -- classes and snapshots ----------------------------------------------------------------

    def set_classes(self, names: Sequence[str], text_features: np.ndarray) -> None:
        """Changes the class set: K names and their K x D text features, in one step for other threads.

        Adapted weights are kept (they are not per class); frames awaiting a step and the collapse
        guard's window are dropped (they were about other classes).
        """
        text = _text_features(text_features, self.embed_dim)
        self._replace_classes(_class_names(names, text.shape[0]), text)

    def set_text_features(self, text_features: np.ndarray) -> None:
        """Changes the text features (K x D) as ``set_classes`` does. The names are kept when K is
        unchanged (the same classes, other prompts); otherwise the classes are named by number."""
        text = _text_features(text_features, self.embed_dim)
        with self._lock:
            names = self._names if len(self._names) == text.shape[0] else _class_names(None, text.shape[0])
            self._replace_classes(names, text)

    def _replace_classes(self, names: tuple[str, ...], text: np.ndarray) -> None:
        with self._lock:
            self._names, self._text = names, text
            self._current = None
            self._continual.new_classes(len(names))

    def snapshot(self) -> HeadSnapshot:
        """The current weights and class set, consistent with each other, and never changed after."""
        with self._lock:
            if self._current is None:
                queries = head_math.text_queries(self._views, self.spec, self._text)
                self._current = HeadSnapshot(self._params, self._views, self._names, self._text, queries,
                                             self._continual.adapted)
            return self._current

    def _snapshot_or_current(self, snapshot: Optional[HeadSnapshot]) -> HeadSnapshot:
        if snapshot is None:
            return self.snapshot()
        if not isinstance(snapshot, HeadSnapshot) or snapshot.params.size != self.spec.size:
            raise RadaError(f"snapshot must be a HeadSnapshot of this head, got {type(snapshot).__name__}",
                            "pass what this head's snapshot() returned, or nothing")
        return snapshot

    # -- inference ----------------------------------------------------------------------------

    def logits(self, features: np.ndarray, *, snapshot: Optional[HeadSnapshot] = None) -> np.ndarray:
        """Logits, B x K float32, of the current weights (or of ``snapshot``'s weights and classes)."""
        f = self._features(features)
        snap = self._snapshot_or_current(snapshot)
        return head_math.chunked_logits(snap.views, self.spec, f, snap.text_features, snap.text_queries)

    def mask(self, features: np.ndarray) -> np.ndarray:
        """The mask M = relu(1 + O), B x K x D float32, of the current weights."""
        f = self._features(features)
        snap = self.snapshot()
        return head_math.chunked_mask(snap.views, self.spec, f, snap.text_features, snap.text_queries)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        return self.logits(features)

    # -- continual adaptation -----------------------------------------------------------------

    def adapt(self, features: np.ndarray) -> np.ndarray:
        """Continual TTA on the next frames (B x D, usually B = 1); returns their logits, B x K.

        The logits are those of the weights before any update (the prediction to act on). Then
        the confident frames join the batch for the next AdamW step, which is taken once
        ``continual_batch`` of them are gathered; unless the collapse guard resets the head first.
        """
        f = self._features(features)
        with self._lock:  # one frame batch at a time: each sees the weights the previous ones left
            return self._adapt(f)

    def adapt_batches(self, batches: Sequence[np.ndarray]) -> tuple[np.ndarray, tuple[str, ...]]:
        """``adapt`` on several frame batches in a row, with no other thread's update in between.

        Returns their logits, concatenated in order, and the class names of the logits' columns.
        Every batch is checked before the first one adapts.
        """
        checked = [self._features(batch) for batch in batches]
        if not checked:
            raise RadaError("adapt_batches got no frames", "pass at least one B x D batch of features")
        with self._lock:
            names = self._names
            logits = [self._adapt(f) for f in checked]
        return np.concatenate(logits), names

    def _adapt(self, f: np.ndarray) -> np.ndarray:
        result = self._continual.adapt(f, self.snapshot())
        if result.collapsed:
            self._publish(self._deployed.copy())
        elif result.params is not None:
            self._publish(result.params)
        return result.logits

    # -- episodic adaptation ------------------------------------------------------------------

    def adapt_episodic(self, view_features: np.ndarray, original: Optional[np.ndarray] = None, *,
                       snapshot: Optional[HeadSnapshot] = None) -> np.ndarray:
        """TPT on one image: adapt on its N views (N x D), return the original's logits (1 x K).

        ``original`` (D or 1 x D) defaults to view 0. Each step keeps the ``keep`` fraction of
        views with the lowest entropy and takes an AdamW step (fresh moments per image) on the
        entropy of their mean softmax. The episode starts from ``snapshot`` (by default the current
        weights: the deployed head, or the continual weights if continual adaptation is under way)
        and never changes the shared head. ``last_episode`` then tells which views were kept and
        their loss before and after.
        """
        views = self._features(view_features)
        if original is None:
            first = views[:1]
        else:
            array = np.asarray(original)
            first = self._features(array.reshape(1, -1) if array.ndim == 1 else array)
            if first.shape[0] != 1:
                raise RadaError(
                    f"original has {first.shape[0]} rows, expected one image", "pass one D or 1 x D feature"
                )
        return self._episodic.adapt(views, first, self._snapshot_or_current(snapshot))

    # -- state --------------------------------------------------------------------------------

    def reset(self) -> None:
        """Back to the deployed weights, with fresh optimizer state, no gathered frames and a
        fresh collapse guard. The counters and the classes are kept."""
        with self._lock:
            self._continual.clear()
            self._publish(self._deployed.copy())

    def state(self) -> dict[str, np.ndarray]:
        """Weights, optimizer moments, counters, guard window and gathered frames, as a flat dict
        of numpy arrays.

        It saves as it is with ``np.savez(path, **head.state())`` and loads back with
        ``head.load_state(dict(np.load(path)))`` into a head built from the same bundle.
        """
        with self._lock:
            continual = self._continual
            predictions, entropies = continual.guard.chronological()
            state = HeadState(
                params=self._params,
                exp_avg=continual.adam.exp_avg,
                exp_avg_sq=continual.adam.exp_avg_sq,
                adam_step=continual.adam.step,
                adapted=continual.adapted,
                num_classes=self.num_classes,
                counters=self.counters,
                guard_predictions=predictions,
                guard_entropies=entropies,
                pending=list(continual.pending.inputs),
            )
            return state_to_dict(state, self._deployed_sha256, self.embed_dim)

    def load_state(self, state: Mapping[str, Any]) -> None:
        """Restores what state() returned; the head must have the same deployed weights.

        The state is checked in full before anything changes, so a bad one leaves the head as it was.
        """
        with self._lock:
            loaded = state_from_dict(state, self._deployed_sha256, self.embed_dim)
            continual = self._continual
            continual.clear()
            continual.new_classes(self.num_classes)
            continual.adam.exp_avg[...] = loaded.exp_avg
            continual.adam.exp_avg_sq[...] = loaded.exp_avg_sq
            continual.adam.step = loaded.adam_step
            continual.adapted = loaded.adapted
            vars(self.counters).update(vars(loaded.counters))
            self._publish(loaded.params)
            if loaded.num_classes != self.num_classes:
                return  # the window and gathered frames were about other classes
            continual.guard.replay(loaded.guard_predictions, loaded.guard_entropies)
            continual.regather(loaded.pending, self.snapshot())

    # -- internals ----------------------------------------------------------------------------

    def _features(self, features: Any) -> np.ndarray:
        return check_matrix(features, "features", self.embed_dim, f"a B x {self.embed_dim} float array")

    def _publish(self, params: np.ndarray) -> None:
        """New weights for readers (never written in place afterwards: readers may hold them)."""
        self._params = params
        self._views = param_views(params, self.embed_dim)
        self._current = None


def _text_features(text_features: Any, dim: int) -> np.ndarray:
    text = check_matrix(text_features, "text_features", dim, f"a K x {dim} float array")
    text.setflags(write=False)  # snapshots hand it out; the head's own copy never changes
    return text


def _class_names(names: Optional[Sequence[str]], count: int) -> tuple[str, ...]:
    """The names of ``count`` classes; numbered ones when none are given."""
    if names is None:
        return tuple(f"class {i}" for i in range(count))
    given = tuple(names) if isinstance(names, Iterable) and not isinstance(names, str) else None
    if given is None or not all(isinstance(n, str) for n in given):
        raise RadaError("class names must be a sequence of str", "pass one name per row of the text features")
    if len(given) != count:
        raise RadaError(f"{len(given)} class names for {count} rows of text features",
                        "pass one name per row of the text features")
    # The head works with one class; a classifier's two-class minimum is the caller's rule.
    return tuple(check_class_names(given, minimum=1, field="class_names"))
