"""Test-time adaptation settings for the device head, and the counters of what it did (no numpy).

Two modes, both acting on the head's six projections only (the encoders stay frozen engines):

- episodic (TPT, Shu et al. 2022): per image, N augmented views; keep the lowest-entropy fraction,
  minimise the entropy of their averaged softmax with AdamW, predict the original, reset.
- continual: one encoder pass per frame, and the head carries its adaptation from frame to frame.
  Naive entropy minimisation collapses on real CLIP features within a few hundred frames, so the
  defaults here are the safe ones: update only on confident frames (EATA), average them over a
  few frames per step, pull the weights back toward the deployed head at every step so that the
  drift stays bounded, and reset when the prediction stream shows collapse (SAR). Measured on real
  CLIP ViT-B features (DTD val, 10,000 frames, batch 1), they stay within 0.2 points of the frozen
  head, trained or zero-init, where naive entropy minimisation falls to 14-19 % within a few
  hundred frames.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass
from typing import Any, Optional

from rada_export.errors import RadaError

MODES = ("episodic", "continual")

# Bounds on the settings, where float32 arithmetic or memory stops following them.
F32_TINY = 2.0**-126  # float32's smallest normal number, about 1.18e-38
MAX_BETA = 1.0 - 2.0**-24  # the largest float32 below 1
MAX_EPS = 1.0  # larger, eps swamps sqrt(v) for any gradient below 1: Adam becomes SGD at lr / eps
MAX_LR = 0.1  # 20 x TPT's 5e-3; see the error message for why more makes no sense
MAX_PULL = 1e6  # anchor and mask_anchor
# All the views of an image are held at once: each is a crop at the image's shorter side (3 bytes a
# pixel: 3.5 MB for a 1080p frame), 3 x 224 x 224 float32 preprocessed pixels (0.6 MB) and a row of
# the encoder batch, and each kept view adds the head's backward cache (3 h K^2 + about 6 K D
# floats: 2 MB at K = 100, D = 512). Measured (tiny model, 1080p frame): about 5 MiB a view, 1.3 GB at
# peak for 256 views (four times TPT's 64), the bound.
MAX_VIEWS = 256
MAX_STEPS = 100  # per image; TPT takes 1
MAX_CONTINUAL_BATCH = 1 << 16  # beyond it the pending-frame memory budget decides anyway
MAX_COLLAPSE_WINDOW = 1 << 20  # 16 MB of predictions and entropies


@dataclass(frozen=True)
class TTAConfig:
    """How the head adapts at test time.

    Attributes:
        mode: ``"continual"`` (one pass per frame, adaptation carried across frames; the camera
            case) or ``"episodic"`` (TPT: N views per image, adapt, predict, reset). It tells the
            runtime which step to drive; ``Head.adapt`` and ``Head.adapt_episodic`` both work
            whatever the mode.

        views: episodic: number of views per image, the original included (TPT uses 64); at most
            ``MAX_VIEWS`` (256), since all of an image's views are held in memory at once.
        keep: episodic: fraction of the views with the lowest prediction entropy whose averaged
            softmax is sharpened; at least one view is always kept.
        steps: episodic: AdamW steps per image (the kept views are chosen again at each step).
        lr: episodic: AdamW learning rate (TPT's 5e-3); 0 takes no step, otherwise at most ``MAX_LR``.
        weight_decay: episodic: AdamW decoupled weight decay (torch's AdamW default, as in TPT);
            ``lr * weight_decay`` must stay below 1 (each step scales the weights by 1 minus it).

        continual_batch: continual: confident frames gathered per AdamW step (their loss is
            averaged). Frames are still predicted one by one as they come; gathering only delays
            the step, which makes it less noisy and amortises the optimizer over the batch.
        continual_lr: continual: AdamW learning rate. Small on purpose: at 1e-4 per frame, naive
            entropy minimisation collapses real CLIP streams within a few hundred frames.
        e_margin: continual: a frame updates the head only when its prediction entropy is below
            ``e_margin * ln K`` (EATA's 0.4); unsure frames are the ones that drive collapse.
            Confident frames are weighted by ``exp(e_margin * ln K - entropy)`` (EATA).
        restore: continual: fraction of the drift from the deployed weights undone before each
            step, ``theta <- theta_0 + (1 - restore) (theta - theta_0)``: the default anchor, a
            decoupled pull like AdamW's weight decay but toward the deployed head. An Adam step
            moves each weight by about ``continual_lr``, so the drift stays within about
            ``continual_lr / restore`` per weight however long the stream runs (2e-4 by default,
            a few per cent of a trained head's out_proj weights).
        anchor: continual: weight of ``anchor / 2 * ||theta - theta_deployed||^2`` in the loss.
            Off by default: Adam rescales each weight's gradient, so this pull is strong on
            weights with small entropy gradients and weak where it matters (out_proj), and it
            bounds nothing over a long stream; ``restore`` does.
        mask_anchor: continual: weight of ``mean((M - 1)^2)`` over the adapted frames in the loss,
            a pull of the mask toward 1 (zero-shot behaviour). Off by default: for a trained head
            the mask is not 1, and pulling it there undoes the training.
        continual_weight_decay: continual: AdamW decoupled weight decay. Zero by default: decay
            pulls toward zero weights, not toward the deployed head. ``continual_lr *
            continual_weight_decay`` must stay below 1.

        collapse_window: continual: number of recent predictions the collapse guard watches; it
            acts only once the window is full, and starts afresh after a reset.
        collapse_share: continual: reset to the deployed head when one class exceeds this share
            of the window's predictions. ``None`` picks ``clamp(4 / K, 0.3, 0.9)``: well above
            what a balanced stream shows, well below collapse. A stream genuinely dominated by one
            class may trigger it; that costs only the adaptation (the head goes back to deployed).
        collapse_entropy: continual: reset when the window's mean prediction entropy, divided by
            ``ln K``, falls below this (over-confidence, SAR's recovery signal). 0 disables it.

        betas: AdamW moment decay rates (both modes), each at most ``MAX_BETA`` (closer to 1, float32
            rounds them to 1).
        eps: AdamW denominator epsilon (both modes); at least float32's smallest normal number
            (``F32_TINY``), below which the float32 step divides 0 by 0 for weights with no gradient.

    A step that still makes non-finite weights (float32 overflow) is dropped in both modes: the
    head keeps its last good weights and ``Counters.skipped_nonfinite`` counts the step.
    """

    mode: str = "continual"

    views: int = 16
    keep: float = 0.1
    steps: int = 1
    lr: float = 5e-3
    weight_decay: float = 0.01

    continual_batch: int = 16
    continual_lr: float = 1e-5
    e_margin: float = 0.4
    restore: float = 0.05
    anchor: float = 0.0
    mask_anchor: float = 0.0
    continual_weight_decay: float = 0.0

    collapse_window: int = 256
    collapse_share: Optional[float] = None
    collapse_entropy: float = 0.0

    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            _bad("mode", self.mode, "one of " + ", ".join(repr(m) for m in MODES))
        _check_int("views", self.views, 1, MAX_VIEWS, "each view is a crop held in memory and an encoder pass")
        _check_int("steps", self.steps, 1, MAX_STEPS, "each step is a forward and backward pass per image")
        _check_int("continual_batch", self.continual_batch, 1, MAX_CONTINUAL_BATCH)
        _check_int("collapse_window", self.collapse_window, 2, MAX_COLLAPSE_WINDOW,
                   "the guard keeps 16 bytes per frame of its window")
        if not (_finite(self.keep) and 0.0 < self.keep <= 1.0):
            _bad("keep", self.keep, "a fraction in (0, 1]")
        for name in ("lr", "continual_lr"):
            value = getattr(self, name)
            if not (_finite(value) and (value == 0.0 or F32_TINY <= value <= MAX_LR)):
                _bad(name, value, f"0 (no updates) or a learning rate in [{F32_TINY:.3g}, {MAX_LR:g}]",
                     f"an AdamW step moves every weight by about the learning rate, and the head's weights are "
                     f"of order 1/sqrt(D): above {MAX_LR:g} one step replaces them rather than adapting them")
        if not (_finite(self.restore) and 0.0 <= self.restore < 1.0):
            _bad("restore", self.restore, "a fraction in [0, 1)")
        for name in ("weight_decay", "continual_weight_decay"):
            value = getattr(self, name)
            if not (_finite(value) and value >= 0.0):
                _bad(name, value, "a finite number >= 0")
        for name in ("anchor", "mask_anchor"):
            value = getattr(self, name)
            if not (_finite(value) and 0.0 <= value <= MAX_PULL):
                _bad(name, value, f"a number in [0, {MAX_PULL:g}]",
                     "Adam rescales the gradient, so a stronger pull changes nothing but can overflow float32")
        _check_decay("lr", self.lr, "weight_decay", self.weight_decay)
        _check_decay("continual_lr", self.continual_lr, "continual_weight_decay", self.continual_weight_decay)
        if not (_finite(self.e_margin) and 0.0 < self.e_margin <= 1.0):
            _bad("e_margin", self.e_margin, "a fraction of ln K in (0, 1]")
        if self.collapse_share is not None and not (_finite(self.collapse_share) and 0.0 < self.collapse_share <= 1.0):
            _bad("collapse_share", self.collapse_share, "a share in (0, 1], or None for the automatic one")
        if not (_finite(self.collapse_entropy) and 0.0 <= self.collapse_entropy < 1.0):
            _bad("collapse_entropy", self.collapse_entropy, "a fraction of ln K in [0, 1) (0 disables it)")
        betas = self.betas
        if not (
            isinstance(betas, (tuple, list))
            and len(betas) == 2
            and all(_finite(b) and 0.0 <= b <= MAX_BETA for b in betas)
        ):
            _bad("betas", betas, f"two numbers in [0, {MAX_BETA!r}]",
                 "a beta closer to 1 rounds to 1 in float32, and that moment would never decay")
        object.__setattr__(self, "betas", (float(betas[0]), float(betas[1])))
        if not (_finite(self.eps) and F32_TINY <= self.eps <= MAX_EPS):
            _bad("eps", self.eps, f"a number in [{F32_TINY:.3g}, {MAX_EPS:g}]",
                 "below float32's smallest normal number eps is subnormal or 0 in the float32 step, and a weight "
                 "whose gradient has been 0 gets 0 / 0 = NaN (or an overflowing step)")

    def kept_views(self, num_views: int) -> int:
        """How many of ``num_views`` views the episodic step sharpens (TPT truncates)."""
        return max(1, int(num_views * self.keep))

    def share_limit(self, num_classes: int) -> float:
        """The collapse guard's per-class share limit for ``num_classes`` classes."""
        if self.collapse_share is not None:
            return float(self.collapse_share)
        return min(0.9, max(0.3, 4.0 / max(1, num_classes)))

    def entropy_limit(self, num_classes: int) -> float:
        """Entropy (nats) below which a frame counts as confident; 0 for one class (never)."""
        return self.e_margin * math.log(num_classes) if num_classes > 1 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TTAConfig":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise RadaError(
                f"unknown TTA setting(s): {', '.join(unknown)}",
                f"use only: {', '.join(sorted(known))}",
            )
        values = dict(data)
        if "betas" in values and isinstance(values["betas"], list):
            values["betas"] = tuple(values["betas"])
        return cls(**values)


@dataclass
class Counters:
    """What adaptation has done so far; kept across reset() (they describe the whole run)."""

    frames: int = 0  # frames (rows) seen by continual adaptation
    updates: int = 0  # AdamW steps applied, continual and episodic
    skipped_unconfident: int = 0  # frames too unsure to learn from (entropy >= e_margin * ln K)
    # frames with non-finite logits, plus steps with a non-finite gradient or that made non-finite
    # weights (such a step is dropped: the head keeps its last good weights)
    skipped_nonfinite: int = 0
    resets: int = 0  # collapse-guard resets to the deployed head
    episodes: int = 0  # episodic adaptations (one per image)

def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_int(name: str, value: Any, minimum: int, maximum: int, why: Optional[str] = None) -> None:
    if not (isinstance(value, numbers.Integral) and not isinstance(value, bool) and minimum <= value <= maximum):
        _bad(name, value, f"an integer in [{minimum}, {maximum}]", why)


def _check_decay(lr_name: str, lr: float, decay_name: str, decay: float) -> None:
    """AdamW multiplies the weights by ``1 - lr * weight_decay`` each step: at 1 or more that factor
    flips their sign (from 2 on it grows them each step until float32 overflows)."""
    if lr * decay >= 1.0:
        raise RadaError(
            f"TTA settings {lr_name}={lr!r} and {decay_name}={decay!r} are invalid: {lr_name} * {decay_name} = "
            f"{lr * decay:g}, and each AdamW step multiplies the weights by 1 - {lr_name} * {decay_name}, which "
            "must stay above 0",
            f"keep {lr_name} * {decay_name} below 1 (torch's AdamW default weight decay is 0.01)", field=decay_name)


def _bad(name: str, value: Any, expected: str, why: Optional[str] = None) -> None:
    reason = f" ({why})" if why else ""
    default = TTAConfig.__dataclass_fields__[name].default
    raise RadaError(f"TTA setting {name}={value!r} is invalid: expected {expected}{reason}",
                    f"set {name}={default!r} (the default) or another value: {expected}", field=name)
