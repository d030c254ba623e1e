"""The encoder + head phase: epochs over augmented images, validation, the best epoch, resumable.

Runs the same in one process and under torchrun (DDP): see data.py for why the global batches,
and so the averaged gradients, do not depend on the world size.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from torch.nn import functional as F

from ..clip import LoadedClip
from ..distributed import Shard, all_reduce_sum, training_device
from ..errors import RadaError
from ..features import augment_transform
from ..head import RAdaHead
from ..progress import SILENT, Reporter
from . import data, schedule, state, wise
from .config import FinetuneConfig
from .model import FinetuneModel, set_trainable, text_keys, tower_parameters, visual_keys


@dataclass
class EpochRecord:
    epoch: int  # 0: the warm phase's head on the pretrained encoder
    val_accuracy: float
    train_loss: float | None = None
    seconds: float = 0.0


@dataclass
class FinetuneOutcome:
    encoder_state: dict[str, torch.Tensor]  # what the checkpoint carries (WiSE-mixed when asked)
    head: RAdaHead
    best_epoch: int
    best_accuracy: float
    warm_accuracy: float
    wise_accuracy: float | None
    history: list[EpochRecord] = field(default_factory=list)
    seconds: float = 0.0
    towers: list[str] = field(default_factory=list)


@dataclass
class FinetuneInputs:
    """What the warm phase hands over."""

    clip: LoadedClip
    head: RAdaHead  # trained on frozen features
    text_features: torch.Tensor  # K x D, from the frozen text tower
    train_paths: Sequence[Path]
    train_labels: Sequence[int]
    val_paths: Sequence[Path]
    val_labels: Sequence[int]
    tokens: torch.Tensor | None = None  # K * T prompt tokens, for a trainable text tower
    alpha: float = 0.0  # the mask regulariser's weight
    seed: int = 0


@dataclass
class RunControl:
    state_file: Path
    resume: bool = False
    fingerprint: dict[str, Any] = field(default_factory=dict)  # what a resumed run must share
    stop_after_epochs: int | None = None  # leave the run resumable after this many epochs of this call


def per_sample_loss(logits: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """rada_loss per sample: summed and divided by the global batch, its mean is rada_loss's value."""
    loss = F.cross_entropy(logits, labels, reduction="none")
    if alpha:
        loss = loss + alpha * (mask - 1.0).abs().flatten(1).amax(dim=1)
    return loss


def _trained_keys(model: torch.nn.Module, cfg: FinetuneConfig) -> tuple[list[str], list[str]]:
    keys = visual_keys(model) + (text_keys(model) if cfg.unfreeze_text else [])
    return keys, ["visual", "text"] if cfg.unfreeze_text else ["visual"]


def _snapshot(module: torch.nn.Module, keys: list[str]) -> dict[str, torch.Tensor]:
    own = module.state_dict()
    return {k: own[k].detach().cpu().clone() for k in keys}


@torch.no_grad()
def evaluate(model: FinetuneModel, dataset: data.EvalImages, batch_size: int, shard: Shard, device: torch.device,
             num_workers: int = 0) -> float:
    """Top-1 over the validation images; each rank scores its share and the counts are summed."""
    was_training = model.training
    model.eval()
    text = model.current_text_features()
    mine = list(shard.indices(len(dataset)))
    batches = [mine[i : i + batch_size] for i in range(0, len(mine), batch_size)]
    correct = 0
    for pixels, labels in data.loader(dataset, batches, num_workers) if batches else []:
        logits = model.head(model.image_features(pixels.to(device)), text)
        correct += int((logits.argmax(-1).cpu() == labels).sum())
    model.train(was_training)
    total_correct, = all_reduce_sum([correct], shard)
    return total_correct / max(1, len(dataset))


def _check_resume(meta: dict[str, Any], control: RunControl, origin: str) -> None:
    recorded = meta.get("fingerprint")
    if json.dumps(recorded, sort_keys=True) != json.dumps(control.fingerprint, sort_keys=True):
        diff = [k for k in sorted(set(recorded or {}) | set(control.fingerprint))
                if (recorded or {}).get(k) != control.fingerprint.get(k)]
        raise RadaError(f"{origin} was written by a run with other settings ({', '.join(diff[:4])} differ)",
                        "resume with the same data, model and options, or start again with resume=False", field="resume")


def finetune(inputs: FinetuneInputs, cfg: FinetuneConfig, control: RunControl, shard: Shard = Shard(),
             reporter: Reporter = SILENT) -> FinetuneOutcome | None:
    """Trains the image encoder (and the text encoder when asked) with the head; None when the run
    stopped early on purpose (``stop_after_epochs``), its state left to resume."""
    from torch.nn.parallel import DistributedDataParallel

    started = time.perf_counter()
    clip = inputs.clip
    device = training_device(shard, cfg.device)
    model = clip.model
    set_trainable(model, cfg.unfreeze_text)
    if cfg.grad_checkpointing:
        if not hasattr(model, "set_grad_checkpointing"):
            raise RadaError(f"{clip.model_name} offers no activation checkpointing", "pass grad_checkpointing=False",
                            field="grad_checkpointing")
        model.set_grad_checkpointing(True)
    keys, towers = _trained_keys(model, cfg)
    pretrained = _snapshot(model, keys) if cfg.wise_alpha is not None else None
    head = inputs.head
    ft = FinetuneModel(model, head, inputs.text_features, cfg.amp,
                       inputs.tokens if cfg.unfreeze_text else None).to(device)
    ft.train()
    encoder_towers = tower_parameters(model)[: 2 if cfg.unfreeze_text else 1]
    groups = schedule.param_groups(encoder_towers, head.named_parameters(), encoder_lr=cfg.encoder_lr,
                                   head_lr=cfg.head_lr, weight_decay=cfg.weight_decay, layer_decay=cfg.layer_decay)
    optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    trainable = [p for g in groups for p in g["params"]]
    # The warm phase leaves its last gradients on the head: they must not add to the first step here.
    optimizer.zero_grad(set_to_none=True)

    train_set = data.AugmentedImages(inputs.train_paths, inputs.train_labels, augment_transform(clip.preprocess_config),
                                     inputs.seed)
    val_set = data.EvalImages(inputs.val_paths, inputs.val_labels, clip.preprocess)
    steps_per_epoch = len(data.global_batches(len(train_set), cfg.batch_size, inputs.seed, 0))
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_fraction * total_steps)
    head_keys = list(head.state_dict())

    history: list[EpochRecord] = []
    start_epoch = 0
    if control.resume:
        tensors, meta = state.load_state(control.state_file)
        origin = f"resume state {control.state_file}"
        _check_resume(meta, control, origin)
        state.load_into(model, state.take(tensors, "model."), keys, origin)
        state.load_into(head, state.take(tensors, "head."), head_keys, origin)
        state.load_optimizer(optimizer, state.take(tensors, "opt."), origin)
        best = (state.take(tensors, "best.model."), state.take(tensors, "best.head."))
        if set(best[0]) != set(keys) or set(best[1]) != set(head_keys):
            raise RadaError(f"{origin} lacks the best epoch's weights", "start again with resume=False", field="resume")
        history = [EpochRecord(**r) for r in meta["history"]]
        start_epoch, best_epoch, best_acc = int(meta["epoch_done"]), int(meta["best_epoch"]), float(meta["best_accuracy"])
        reporter.log(f"resuming after epoch {start_epoch} of {cfg.epochs} (best so far: epoch {best_epoch}, "
                     f"{best_acc:.1%})")
    else:
        warm_acc = evaluate(ft, val_set, cfg.batch_size, shard, device, cfg.num_workers)
        history.append(EpochRecord(0, warm_acc))
        reporter.log(f"epoch 0 (warm head, pretrained encoder): val top-1 {warm_acc:.1%}")
        best, best_epoch, best_acc = (_snapshot(model, keys), _snapshot(head, head_keys)), 0, warm_acc

    wrapped = ft
    if shard.world_size > 1:
        wrapped = DistributedDataParallel(ft, device_ids=[device.index] if device.type == "cuda" else None)

    run_epochs = 0
    for epoch in range(start_epoch, cfg.epochs):
        epoch_start = time.perf_counter()
        train_set.epoch = epoch
        batches = data.global_batches(len(train_set), cfg.batch_size, inputs.seed, epoch)
        slices = [data.rank_slice(b, shard) for b in batches]
        loss_sum = 0.0
        with reporter.task(f"fine-tuning epoch {epoch + 1}/{cfg.epochs}", len(batches)) as advance:
            for i, ((pixels, labels), (_, stand_in), batch) in enumerate(
                    zip(data.loader(train_set, [s for s, _ in slices], cfg.num_workers), slices, batches)):
                schedule.set_lr(optimizer, schedule.lr_factor(epoch * steps_per_epoch + i, total_steps, warmup))
                logits, mask = wrapped(pixels.to(device))
                losses = per_sample_loss(logits, mask, labels.to(device), inputs.alpha)
                weight = 0.0 if stand_in else shard.world_size / len(batch)  # DDP averages over the world
                (losses.sum() * weight).backward()
                if cfg.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if not stand_in:
                    loss_sum += float(losses.detach().sum())

                advance(1)
        total_loss, = all_reduce_sum([loss_sum], shard)
        acc = evaluate(ft, val_set, cfg.batch_size, shard, device, cfg.num_workers)
        record = EpochRecord(epoch + 1, acc, total_loss / len(train_set), time.perf_counter() - epoch_start)
        history.append(record)
        improved = acc > best_acc
        if improved:
            best, best_epoch, best_acc = (_snapshot(model, keys), _snapshot(head, head_keys)), epoch + 1, acc
        reporter.log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {record.train_loss:.4f}, val top-1 {acc:.1%}"
                     + (" (best)" if improved else f" (best: epoch {best_epoch}, {best_acc:.1%})")
                     + f", {record.seconds:.1f} s")
        if shard.is_main:
            _save(control, model, head, optimizer, keys, head_keys, best, epoch + 1, best_epoch, best_acc, history)
        run_epochs += 1
        if control.stop_after_epochs is not None and run_epochs >= control.stop_after_epochs and epoch + 1 < cfg.epochs:
            reporter.log(f"stopped after epoch {epoch + 1} as asked; continue with --resume")
            return None

    state.load_into(model, best[0], keys, "best epoch")
    state.load_into(head, best[1], head_keys, "best epoch")
    encoder_state, wise_acc = best[0], None
    if cfg.wise_alpha is not None:
        encoder_state = wise.interpolate(pretrained, best[0], cfg.wise_alpha)
        state.load_into(model, encoder_state, keys, "WiSE-FT ensemble")
        wise_acc = evaluate(ft, val_set, cfg.batch_size, shard, device, cfg.num_workers)
        reporter.log(f"WiSE-FT alpha {cfg.wise_alpha:g} (epoch {best_epoch} with the pretrained encoder): val top-1 {wise_acc:.1%}")
    model.to("cpu").eval()
    head.to("cpu").eval()
    for p in model.parameters():
        p.requires_grad_(False)
    if cfg.grad_checkpointing:
        model.set_grad_checkpointing(False)
    return FinetuneOutcome(encoder_state=encoder_state, head=head, best_epoch=best_epoch, best_accuracy=best_acc,
                           warm_accuracy=history[0].val_accuracy, wise_accuracy=wise_acc, history=history,
                           seconds=time.perf_counter() - started, towers=towers)


def _save(control: RunControl, model, head, optimizer, keys, head_keys, best, epoch_done, best_epoch, best_acc,
          history) -> None:
    tensors = {
        **state.put("model.", _snapshot(model, keys)), **state.put("head.", _snapshot(head, head_keys)),
        **state.put("opt.", state.optimizer_tensors(optimizer)),
        **state.put("best.model.", best[0]), **state.put("best.head.", best[1]),
    }
    meta = {"epoch_done": epoch_done, "best_epoch": best_epoch, "best_accuracy": best_acc,
            "history": [r.__dict__ for r in history], "fingerprint": control.fingerprint}
    state.save_state(control.state_file, tensors, meta)
