"""Continual test-time adaptation of the head: one encoder pass per frame, adaptation carried on.

Only confident frames teach (EATA: entropy below ``e_margin * ln K``, each weighted by how sure it
is); they are gathered into batches of ``continual_batch`` frames per AdamW step; each step pulls
the weights back toward the deployed head (``restore``); and the collapse guard sends the head back
to its deployed weights when the predictions collapse (SAR). The settings are in ``TTAConfig``.

The adapter holds the optimizer, the gathered frames and the guard; the weights belong to the head,
which publishes the new vector each step returns (copy-on-write, for the readers on other threads).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from . import head_math
from .adamw import AdamState, adamw_step, all_finite, gradient_is_finite, moments_are_finite
from .collapse_guard import CollapseGuard
from .head_math import ForwardCache
from .head_params import HeadSpec, ParamViews, param_views
from .head_snapshot import HeadSnapshot
from .losses import entropy_and_grad
from .tta import Counters, TTAConfig

# Bytes of forward intermediates that may be held for frames awaiting a step.
PENDING_BUDGET = 64 << 20


@dataclass
class PendingFrames:
    """Confident frames awaiting the next step.

    Their forward caches are kept, so the step needs no second forward; the frames were seen by
    the same weights that the step starts from, because no step happens in between.
    """

    caches: list[ForwardCache] = field(default_factory=list)
    d_logits: list[np.ndarray] = field(default_factory=list)  # EATA-weighted dH/dlogits per row
    inputs: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (call features, rows)
    rows: int = 0
    nbytes: int = 0

    def clear(self) -> None:
        self.caches.clear()
        self.d_logits.clear()
        self.inputs.clear()
        self.rows = self.nbytes = 0


def gather(pending: PendingFrames, f: np.ndarray, cache: ForwardCache, ent: np.ndarray, d_ent: np.ndarray,
           rows: np.ndarray, limit: float) -> None:
    """Adds the frames ``rows`` of a batch (features f, its forward cache and entropies) to ``pending``."""
    # EATA's sample weights are constants (no gradient through them): surer frames count more.
    weight = np.exp(limit - ent[rows].astype(np.float64)).astype(np.float32)
    kept = head_math.take_rows(cache, rows)
    pending.caches.append(kept)
    pending.d_logits.append(d_ent[rows] * weight[:, None])
    pending.inputs.append((f, rows))
    pending.rows += rows.size
    pending.nbytes += head_math.cache_bytes(kept)


def pending_gradient(p: ParamViews, spec: HeadSpec, text: np.ndarray, pending: PendingFrames, mask_anchor: float,
                     g: ParamViews) -> None:
    """Writes into ``g`` the gradient of the gathered frames' loss (the weight anchor excluded):
    the mean EATA-weighted entropy, plus ``mask_anchor * mean((M - 1)^2)``."""
    cache = head_math.concat_caches(pending.caches)
    d_logits = np.concatenate(pending.d_logits) * (1.0 / pending.rows)
    d_mask = None
    if mask_anchor:
        d_mask = cache.mask - 1.0
        d_mask *= 2.0 * mask_anchor / d_mask.size
    head_math.backward(p, spec, cache, text, d_logits, d_mask, g)


@dataclass(frozen=True)
class ContinualResult:
    """One batch of frames through continual adaptation."""

    logits: np.ndarray  # B x K, from the weights before any update
    params: Optional[np.ndarray]  # new weights for the head to publish, when a step was taken
    collapsed: bool  # the guard saw adapted weights collapse: the head goes back to deployed


class ContinualAdapter:
    """Optimizer state, gathered frames and collapse guard of one head's continual adaptation.

    Not thread-safe by itself: the head calls it under its lock.
    """

    def __init__(self, spec: HeadSpec, config: TTAConfig, deployed: np.ndarray, counters: Counters, num_classes: int):
        self.spec = spec
        self.config = config
        self.deployed = deployed  # read-only: the anchor and restore pull toward it
        self.counters = counters
        self.adam = AdamState.zeros(deployed.size)
        self.pending = PendingFrames()
        self.guard = CollapseGuard(config, num_classes)
        self.adapted = False  # whether a step has moved the weights from the deployed ones
        self._grad = np.zeros(deployed.size, dtype=np.float32)
        self._g = param_views(self._grad, spec.embed_dim)
        self._scratch = np.empty(deployed.size, dtype=np.float32)
        self._spare: Optional[np.ndarray] = None  # the weights two steps old, reused when no reader holds them

    def clear(self) -> None:
        """As the deployed head starts: fresh moments, nothing gathered, an empty guard window."""
        self.adam.clear()
        self.pending.clear()
        self.guard.clear()
        self.adapted = False

    def new_classes(self, num_classes: int) -> None:
        """Gathered frames and the guard's window were about the old classes: dropped."""
        self.pending.clear()
        self.guard = CollapseGuard(self.config, num_classes)

    def adapt(self, f: np.ndarray, snap: HeadSnapshot) -> ContinualResult:
        """Predicts frames f (B x D) with the snapshot's weights, then learns from the confident ones."""
        cfg, counters = self.config, self.counters
        # Overflow is possible with absurd (finite) inputs: it is caught, counted and skipped below.
        with np.errstate(over="ignore", invalid="ignore"):
            logits, _, cache = head_math.forward(snap.views, self.spec, f, snap.text_features, snap.text_queries, True)
        counters.frames += f.shape[0]
        ent, d_ent = entropy_and_grad(logits)
        finite = np.isfinite(logits).all(axis=1) & np.isfinite(ent)
        counters.skipped_nonfinite += int(f.shape[0] - finite.sum())
        # The deployed head seeing the stream this way is the stream, not collapse: look again.
        if self.guard.observe(logits, ent, finite) and self.adapted:
            self.clear()
            counters.resets += 1
            return ContinualResult(logits, None, True)
        limit = cfg.entropy_limit(snap.num_classes)
        confident = finite & (ent < limit)
        counters.skipped_unconfident += int((finite & ~confident).sum())
        params = None
        if confident.any() and cfg.continual_lr > 0.0:
            assert cache is not None
            gather(self.pending, f, cache, ent, d_ent, np.flatnonzero(confident), limit)
            if self.pending.rows >= cfg.continual_batch or self.pending.nbytes >= PENDING_BUDGET:
                params = self._step(snap)
        return ContinualResult(logits, params, False)

    def _step(self, snap: HeadSnapshot) -> Optional[np.ndarray]:
        cfg = self.config
        pending_gradient(snap.views, self.spec, snap.text_features, self.pending, cfg.mask_anchor, self._g)
        self.pending.clear()
        if not gradient_is_finite(self._grad):
            self.counters.skipped_nonfinite += 1
            return None
        # Copy-on-write: readers that took the old weights keep a consistent (older) set. The
        # buffer two steps old is reused when no reader holds it any more (its only references
        # are then this local name and getrefcount's argument), which saves an allocation.
        spare, self._spare = self._spare, None
        if spare is None or sys.getrefcount(spare) > 2:
            spare = np.empty_like(snap.params)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            adamw_step(
                snap.params, self._grad, self.adam, lr=cfg.continual_lr, weight_decay=cfg.continual_weight_decay,
                betas=cfg.betas, eps=cfg.eps, scratch=self._scratch, anchor=cfg.anchor, restore=cfg.restore,
                reference=self.deployed, out=spare,
            )
        if not all_finite(spare):
            # A finite gradient can still make non-finite weights (float32 overflow in the step):
            # they are never published, so the head keeps the last good weights, and the step counts
            # as a non-finite one. Moments that overflowed would poison every later step: cleared.
            self.counters.skipped_nonfinite += 1
            if not moments_are_finite(self.adam):
                self.adam.clear()
            self._spare = spare
            return None
        self._spare = snap.params
        self.counters.updates += 1
        self.adapted = True
        return spare

    def regather(self, groups: list[tuple[np.ndarray, np.ndarray]], snap: HeadSnapshot) -> None:
        """Gathers saved frames again (features, rows): same weights and inputs give the same caches."""
        limit = self.config.entropy_limit(snap.num_classes)
        for f, rows in groups:
            logits, _, cache = head_math.forward(snap.views, self.spec, f, snap.text_features, snap.text_queries, True)
            ent, d_ent = entropy_and_grad(logits)
            assert cache is not None
            gather(self.pending, f, cache, ent, d_ent, rows, limit)
