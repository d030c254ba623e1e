"""From the warm phase of `rada-export train --finetune` to the encoder + head phase."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..clip import LoadedClip
from ..distributed import Shard
from ..errors import RadaError
from ..head import RAdaHead
from ..images import LabelledImages
from ..progress import SILENT, Reporter
from .config import FinetuneConfig, check_data_size
from .loop import FinetuneInputs, FinetuneOutcome, RunControl, finetune
from .state import state_path


@dataclass(frozen=True)
class FinetuneRun:
    """How this call runs: fresh or resumed, and whether it stops early on purpose."""

    resume: bool = False
    stop_after_epochs: int | None = None


def check_before_work(out: Path, run: FinetuneRun, force: bool) -> None:
    """A leftover resumable state is neither silently continued nor silently replaced."""
    from .. import validate

    if run.stop_after_epochs is not None:
        validate.integer("stop_after_epochs", run.stop_after_epochs, 1)
    path = state_path(out)
    if run.resume and not path.is_file():
        raise RadaError(f"resume=True, but there is no resumable state at {path}",
                        "pass the out path of the interrupted run, or resume=False to start", field="resume")
    if not run.resume and path.exists() and not force:
        raise RadaError(f"a resumable fine-tuning state from an earlier run exists at {path}",
                        "pass resume=True to continue it, or force=True to start again (it is replaced)", field="resume")


def check_sizes(train: LabelledImages, val: LabelledImages) -> None:
    k = len(train.class_names)
    check_data_size([train.labels.count(i) for i in range(k)], [val.labels.count(i) for i in range(k)], train.class_names)


def _readable(images: LabelledImages, skipped: Sequence[Path]) -> tuple[list[Path], list[int]]:
    bad = {Path(p) for p in skipped}
    kept = [(p, y) for p, y in zip(images.paths, images.labels) if Path(p) not in bad]
    return [p for p, _ in kept], [y for _, y in kept]


def prompt_tokens(clip: LoadedClip, class_names: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Class-major prompts (class 0's templates first), as the frozen text features average them."""
    return clip.tokenizer([t.format(name) for name in class_names for t in templates])


def run_finetune_phase(
    *, clip: LoadedClip, head: RAdaHead, text: torch.Tensor, train: LabelledImages, val: LabelledImages,
    skipped: Sequence[Path], templates: Sequence[str], cfg: FinetuneConfig, run: FinetuneRun, out: Path,
    alpha: float, seed: int, fingerprint: dict[str, Any], shard: Shard, reporter: Reporter = SILENT,
) -> FinetuneOutcome | None:
    train_paths, train_labels = _readable(train, skipped)
    val_paths, val_labels = _readable(val, skipped)
    k = len(train.class_names)
    check_data_size([train_labels.count(i) for i in range(k)], [val_labels.count(i) for i in range(k)], train.class_names)
    inputs = FinetuneInputs(
        clip=clip, head=head, text_features=text, train_paths=train_paths, train_labels=train_labels,
        val_paths=val_paths, val_labels=val_labels, alpha=alpha, seed=seed,
        tokens=prompt_tokens(clip, train.class_names, templates) if cfg.unfreeze_text else None,
    )
    control = RunControl(state_file=state_path(out), resume=run.resume,
                         fingerprint={**fingerprint, "num_train_images": len(train_paths), "num_val_images": len(val_paths),
                                      "schedule": cfg.schedule_key()},
                         stop_after_epochs=run.stop_after_epochs)
    return finetune(inputs, cfg, control, shard, reporter)


def finish(out: Path, shard: Shard) -> None:
    """The final checkpoint is written: the resumable state has served (it is ours, beside it)."""
    path = state_path(out)
    if shard.is_main and path.is_file():
        path.unlink()
