"""Episodic test-time adaptation of the head: TPT (Shu et al. 2022) on its six projections.

Per image: the features of N augmented views; keep the fraction with the lowest prediction
entropy; AdamW steps (fresh moments) on the entropy of their mean softmax; predict the original
image with the adapted weights; forget them. Each episode adapts a private copy of the weights in
buffers of its own thread, so episodes on several threads neither wait for nor see each other.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import ContextManager, Optional

import numpy as np

from . import head_math
from .adamw import AdamState, adamw_step, all_finite, gradient_is_finite
from .head_params import HeadSpec, ParamViews, param_views
from .head_snapshot import HeadSnapshot
from .losses import entropy, marginal_entropy_and_grad
from .tta import Counters, TTAConfig


@dataclass(frozen=True)
class EpisodeReport:
    """What the last episode did."""

    kept: np.ndarray  # indices of the views kept at the first step, lowest entropy first
    loss_before: float  # their marginal entropy at the starting weights (nan when no step ran)
    loss_after: float  # the same views' marginal entropy at the adapted weights
    steps: int  # AdamW steps taken (fewer than asked when a gradient was not finite)


class EpisodeBuffers:
    """One thread's private buffers for episodes: an episode's weights, gradient and moments."""

    def __init__(self, size: int, dim: int):
        self.params = np.empty(size, dtype=np.float32)
        self.views = param_views(self.params, dim)
        self.grad = np.zeros(size, dtype=np.float32)
        self.g = param_views(self.grad, dim)
        self.scratch = np.empty(size, dtype=np.float32)
        self.adam = AdamState.zeros(size)
        self.last_good = np.empty(size, dtype=np.float32)  # the weights before the step under way


def kept_views(p: ParamViews, spec: HeadSpec, views: np.ndarray, text: np.ndarray, q2: np.ndarray,
               count: int) -> Optional[np.ndarray]:
    """Indices of the ``count`` views of lowest entropy, lowest first; None when the logits are not finite."""
    ent = entropy(head_math.chunked_logits(p, spec, views, text, q2))
    if not np.isfinite(ent).all():
        return None
    return np.argsort(ent, kind="stable")[:count]


def marginal_entropy_gradient(p: ParamViews, spec: HeadSpec, views: np.ndarray, text: np.ndarray, q2: np.ndarray,
                              g: ParamViews) -> float:
    """TPT's loss on these views (the kept ones); its gradient is written into ``g``."""
    logits, _, cache = head_math.forward(p, spec, views, text, q2, True)
    loss, d_logits = marginal_entropy_and_grad(logits)
    assert cache is not None
    head_math.backward(p, spec, cache, text, d_logits, None, g)
    return loss


class EpisodicAdapter:
    """Runs episodes for one head; ``counters`` are updated under ``lock`` (the head's)."""

    def __init__(self, spec: HeadSpec, config: TTAConfig, counters: Counters, lock: ContextManager):
        self.spec = spec
        self.config = config
        self.counters = counters
        self._lock = lock
        self._local = threading.local()  # per thread: buffers and the last episode's report

    @property
    def last_episode(self) -> Optional[EpisodeReport]:
        """This thread's last episode."""
        return getattr(self._local, "episode", None)

    def _buffers(self) -> EpisodeBuffers:
        buffers = getattr(self._local, "buffers", None)
        if buffers is None:
            buffers = self._local.buffers = EpisodeBuffers(self.spec.size, self.spec.embed_dim)
        return buffers

    def adapt(self, views: np.ndarray, original: np.ndarray, snap: HeadSnapshot) -> np.ndarray:
        """Adapts a copy of the snapshot's weights on the views (N x D); the original's logits (1 x K)."""
        cfg, spec = self.config, self.spec
        text, q2 = snap.text_features, snap.text_queries
        work = self._buffers()
        np.copyto(work.params, snap.params)
        work.adam.clear()
        p = work.views
        count = cfg.kept_views(views.shape[0])
        kept: Optional[np.ndarray] = None
        loss_before, steps, nonfinite = math.nan, 0, 0
        try:
            for _ in range(cfg.steps):
                order = kept_views(p, spec, views, text, q2, count)
                if order is None:
                    nonfinite += 1
                    break
                kept = order if kept is None else kept
                loss = marginal_entropy_gradient(p, spec, views[order], text, q2, work.g)
                loss_before = loss if steps == 0 else loss_before
                if not gradient_is_finite(work.grad):
                    nonfinite += 1
                    break
                if cfg.lr == 0.0:
                    break
                np.copyto(work.last_good, work.params)
                with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                    adamw_step(work.params, work.grad, work.adam, lr=cfg.lr, weight_decay=cfg.weight_decay,
                               betas=cfg.betas, eps=cfg.eps, scratch=work.scratch)
                if not all_finite(work.params):
                    # The step made non-finite weights (float32 overflow): predict with the last good ones.
                    np.copyto(work.params, work.last_good)
                    nonfinite += 1
                    break
                q2 = head_math.text_queries(p, spec, text)
                steps += 1
            # One forward for the prediction and for the kept views' loss after adaptation.
            rows = original if kept is None else np.concatenate([original, views[kept]])
            out = head_math.chunked_logits(p, spec, rows, text, q2)
            loss_after = marginal_entropy_and_grad(out[1:])[0] if kept is not None else math.nan
            self._local.episode = EpisodeReport(
                kept=np.zeros(0, dtype=np.int64) if kept is None else kept,
                loss_before=loss_before,
                loss_after=loss_after,
                steps=steps,
            )
            return out[:1].copy()
        finally:
            with self._lock:
                self.counters.episodes += 1
                self.counters.updates += steps
                self.counters.skipped_nonfinite += nonfinite
