"""`rada-export train`: an ImageFolder in, a trained head checkpoint out.

Frozen mode (the default) trains the head on cached features of frozen encoders. With
``finetune`` set, that training is the warm phase, and the image encoder then trains with the
head (rada_export.finetune); the checkpoint carries the fine-tuned encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


from . import validate
from .checkpoint import HeadMetadata, save_head
from .clip import LoadedClip, load_clip
from .defaults import DEFAULT_MODEL
from .errors import RadaError
from .distributed import Shard, finish, init_from_env
from .finetune.config import FinetuneConfig
from .finetune.job import FinetuneRun, check_before_work, check_sizes, run_finetune_phase
from .finetune.job import finish as finish_finetune
from .finetune.loop import FinetuneOutcome
from .finetune.state import state_path
from .features import encode_images
from .head import RAdaHead
from .images import LabelledImages, sample_shots, scan_image_folder, split_holdout
from .progress import SILENT, Reporter
from .prompts import text_features, validate_class_names, validate_templates
from .train import TrainConfig, accuracy, fit_head


@dataclass
class TrainJob:
    data: Path
    out: Path
    model: str = DEFAULT_MODEL
    pretrained: str | None = None  # None: openai for built-in names, the source's own weights for hf-hub:/local-dir:
    pretrained_cfg: str | None = None  # the tag whose settings apply to a weights file
    val: Path | None = None
    val_fraction: float = 0.2
    shots: int | None = None
    aug_copies: int = 4
    templates: list[str] = field(default_factory=list)
    config: TrainConfig = field(default_factory=TrainConfig)
    encode_batch_size: int = 32
    force: bool = False
    finetune: FinetuneConfig | None = None  # None: frozen encoders (the default)
    run: FinetuneRun = field(default_factory=FinetuneRun)


@dataclass
class TrainResult:
    checkpoint: Path
    class_names: list[str]
    zero_shot_accuracy: float | None
    trained_accuracy: float | None
    num_train_images: int
    num_val_images: int
    skipped: list[Path]
    encoder_passes: int
    logit_scale: float
    finetune: FinetuneOutcome | None = None  # what the encoder + head phase did
    finished: bool = True  # False: stopped early on purpose, resumable


def _check_output(job: TrainJob) -> None:
    """The options and the output, checked before any image is encoded: a bad value or an output
    folder that cannot be written must fail now, not after training."""
    validate.output_file(job.out, "out", force=job.force, what="checkpoint")
    if job.val is None:
        validate.number("val_fraction", job.val_fraction, 0.0, 1.0)
        if not 0.0 < job.val_fraction < 1.0:
            raise RadaError(f"val_fraction must lie strictly between 0 and 1, got {job.val_fraction}", "use e.g. 0.2",
                            field="val_fraction")
    if job.shots is not None:
        validate.integer("shots", job.shots, 1)
    validate.integer("aug_copies", job.aug_copies, 1)
    validate.integer("encode_batch_size", job.encode_batch_size, 1)
    if job.finetune is not None:
        check_before_work(job.out, job.run, job.force)
    elif job.run.resume or job.run.stop_after_epochs is not None:
        raise RadaError("resume and stop_after_epochs apply to fine-tuning only", "fine-tune the encoder, or leave them out",
                        field="resume")


def _datasets(job: TrainJob) -> tuple[LabelledImages, LabelledImages]:
    data = scan_image_folder(job.data)
    if job.val is not None:
        val = scan_image_folder(job.val)
        if val.class_names != data.class_names:
            raise RadaError(
                f"the validation folder's classes {val.class_names} differ from the training folder's {data.class_names}",
                "give the validation folder the same class sub-folders as the training folder", field="val",
            )
        train = data
    else:
        if not 0.0 < job.val_fraction < 1.0:
            raise RadaError(f"val_fraction must lie in (0, 1), got {job.val_fraction}", "use e.g. 0.2", field="val_fraction")
        train, val = split_holdout(data, job.val_fraction, job.config.seed)
    if job.shots is not None:
        train = sample_shots(train, job.shots, job.config.seed)
    return train, val


def run_train_job(job: TrainJob, reporter: Reporter = SILENT) -> TrainResult | None:
    """Encodes the data once per augmented copy, trains the head on the cache, saves it; with
    ``job.finetune``, then trains the image encoder with the head (rada_export.finetune).

    Under torchrun, every rank encodes its share of the images; in frozen mode rank 0 gathers,
    trains and saves, in fine-tuning every rank trains a DDP replica and rank 0 saves. The other
    ranks return None. A run stopped early on purpose returns a result with ``finished=False``.
    """
    shard = init_from_env()
    try:
        if not shard.is_main:
            reporter = SILENT
        return _run(job, reporter, shard)
    finally:
        finish(shard)


def _run(job: TrainJob, reporter: Reporter, shard: Shard) -> TrainResult | None:
    job = TrainJob(**{**job.__dict__, "data": Path(job.data), "out": Path(job.out)})
    _check_output(job)
    templates = validate_templates(job.templates)
    train, val = _datasets(job)
    validate_class_names(train.class_names)  # folder names, before CLIP loads
    if job.finetune is not None:
        check_sizes(train, val)
    clip = load_clip(job.model, job.pretrained, pretrained_cfg=job.pretrained_cfg)
    for warning in clip.source.warnings:
        reporter.log(f"[yellow]warning:[/yellow] {warning}")
    if clip.random_weights:
        reporter.log("[yellow]random CLIP weights (--pretrained none): accuracies are meaningless; "
                     "pass --pretrained openai (or a weights file) for a real head[/yellow]")
    text = text_features(clip, train.class_names, templates)

    n_train = len(train.paths) * job.aug_copies
    share = f" (rank {shard.rank} of {shard.world_size} encodes its share)" if shard.world_size > 1 else ""
    with reporter.task(f"encoding {len(train.paths)} train images x {job.aug_copies} copies{share}", -(-n_train // shard.world_size)) as advance:
        train_cache = encode_images(
            clip, train.paths, train.labels, aug_copies=job.aug_copies,
            batch_size=job.encode_batch_size, seed=job.config.seed, progress=advance, shard=shard,
        )
    val_cache = None
    if val.paths:
        with reporter.task(f"encoding {len(val.paths)} validation images", -(-len(val.paths) // shard.world_size)) as advance:
            val_cache = encode_images(clip, val.paths, val.labels, batch_size=job.encode_batch_size, progress=advance, shard=shard)
    if not shard.is_main and job.finetune is None:
        return None
    skipped = train_cache.skipped + (val_cache.skipped if val_cache else [])
    if skipped:
        reporter.log(f"[yellow]skipped {len(skipped)} unreadable image file(s), e.g. {skipped[0]}[/yellow]")

    cfg = job.config
    phase = "warm phase: head on frozen features, " if job.finetune is not None else ""
    with reporter.task(f"{phase}training head ({cfg.epochs} epochs)", cfg.epochs) as advance:
        head = fit_head(
            train_cache.features, train_cache.labels, text,
            logit_scale=clip.logit_scale, epochs=cfg.epochs, lr=cfg.lr, batch_size=cfg.batch_size,
            alpha=cfg.alpha, temperature=cfg.temperature, num_heads=cfg.num_heads,
            weight_decay=cfg.weight_decay, seed=cfg.seed, on_epoch=lambda *_: advance(1),
        )
    zs_acc = trained_acc = None
    if val_cache is not None:
        zero_shot = RAdaHead(clip.embed_dim, cfg.num_heads, cfg.temperature, clip.logit_scale)
        zs_acc = accuracy(zero_shot, val_cache.features, val_cache.labels, text)
        trained_acc = accuracy(head, val_cache.features, val_cache.labels, text)

    outcome = None
    if job.finetune is not None:
        if trained_acc is not None:
            reporter.log(f"frozen-encoder head: val top-1 {trained_acc:.1%} (zero-shot {zs_acc:.1%})")
        outcome = run_finetune_phase(
            clip=clip, head=head, text=text, train=train, val=val, skipped=skipped, templates=templates, cfg=job.finetune,
            run=job.run, out=job.out, alpha=cfg.alpha, seed=cfg.seed, shard=shard, reporter=reporter,
            fingerprint={"model": job.model, "pretrained": clip.pretrained, "classes": train.class_names,
                         "templates": templates, "head": cfg.to_dict(), "aug_copies": job.aug_copies, "shots": job.shots},
        )
        if outcome is None:  # stopped early on purpose: the resumable state is the result
            return _stopped(job, train, clip) if shard.is_main else None
        if not shard.is_main:
            return None
        head = outcome.head
        if job.finetune.unfreeze_text:
            text = text_features(clip, train.class_names, templates)  # the tuned text tower's class features

    meta = HeadMetadata(
        embed_dim=clip.embed_dim,
        model=job.model,
        pretrained=clip.pretrained,
        pretrained_cfg=clip.pretrained_cfg,
        resolved=clip.resolved(),
        class_names=train.class_names,
        templates=templates,
        training={
            **cfg.to_dict(),
            "shots": job.shots,
            "aug_copies": job.aug_copies,
            "num_train_images": len(train.paths) - len(train_cache.skipped),
            "val_accuracy": trained_acc if outcome is None else _final_accuracy(outcome),
            "zero_shot_val_accuracy": zs_acc,
            **({} if outcome is None else {"frozen_val_accuracy": trained_acc, "finetune": _finetune_record(job, outcome)}),
        },
    )
    if outcome is None:
        save_head(job.out, head, meta, text_features=text)
    else:
        save_head(job.out, head, meta, text_features=text, encoder_state=outcome.encoder_state,
                  encoder_record={"towers": outcome.towers, "wise_alpha": job.finetune.wise_alpha,
                                  "best_epoch": outcome.best_epoch})
        finish_finetune(job.out, shard)
    return TrainResult(
        checkpoint=job.out,
        class_names=train.class_names,
        zero_shot_accuracy=zs_acc,
        trained_accuracy=trained_acc,
        num_train_images=len(train.paths) - len(train_cache.skipped),
        num_val_images=0 if val_cache is None else int(val_cache.labels.numel()),
        skipped=skipped,
        encoder_passes=train_cache.encoder_passes + (val_cache.encoder_passes if val_cache else 0),
        logit_scale=clip.logit_scale,
        finetune=outcome,
    )


def _final_accuracy(outcome: FinetuneOutcome) -> float:
    return outcome.wise_accuracy if outcome.wise_accuracy is not None else outcome.best_accuracy


def _finetune_record(job: TrainJob, outcome: FinetuneOutcome) -> dict:
    return {**job.finetune.to_dict(), "best_epoch": outcome.best_epoch, "best_val_accuracy": outcome.best_accuracy,
            "wise_val_accuracy": outcome.wise_accuracy, "seconds": round(outcome.seconds, 3),
            "history": [{"epoch": r.epoch, "val_accuracy": r.val_accuracy, "train_loss": r.train_loss} for r in outcome.history]}


def _stopped(job: TrainJob, train: LabelledImages, clip: LoadedClip) -> TrainResult:
    return TrainResult(checkpoint=state_path(job.out), class_names=train.class_names, zero_shot_accuracy=None,
                       trained_accuracy=None, num_train_images=len(train.paths), num_val_images=0, skipped=[],
                       encoder_passes=0, logit_scale=clip.logit_scale, finished=False)
