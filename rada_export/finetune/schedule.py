"""Learning rates of the encoder + head phase: parameter groups, layer-wise decay, warm-up + cosine."""

from __future__ import annotations

import math
import re
from typing import Iterable

import torch

from ..errors import RadaError

# Numbered blocks of the towers open_clip builds: its own transformers (resblocks), timm ViTs
# (blocks) and staged CNNs such as ConvNeXt (stages).
_BLOCK = re.compile(r"(?:^|\.)(?:resblocks|blocks|stages|layers)\.(\d+)\.")
# Outside the blocks, what feeds them (patch and token embeddings, class token, positions, stems,
# the pre-norm) is at the bottom; everything else (final norms, projections, pooling) is on top.
_BOTTOM = re.compile(r"(?:^|\.)(?:conv1|patch_embed|class_embedding|cls_token|positional_embedding|pos_embed|ln_pre|"
                     r"token_embedding|stem)(?:\.|$)")


def lr_factor(step: int, total_steps: int, warmup_steps: int) -> float:
    """Linear warm-up from 0 to 1 over ``warmup_steps``, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def layer_ids(names: Iterable[str]) -> tuple[dict[str, int], int]:
    """Each parameter's depth: 0 for what comes before the first block (patch embedding, class
    token, positions), i + 1 for block i, and num_blocks + 1 after the last (final norm, projection)."""
    names = list(names)
    block_of = {}
    for name in names:
        match = _BLOCK.search(name)
        if match:
            block_of[name] = int(match.group(1))
    if not block_of:
        return {}, 0
    num_blocks = max(block_of.values()) + 1
    ids = {}
    for name in names:
        if name in block_of:
            ids[name] = block_of[name] + 1
        else:
            ids[name] = 0 if _BOTTOM.search(name) else num_blocks + 1
    return ids, num_blocks


def _decays(p: torch.Tensor) -> bool:
    # Gains, biases, class tokens and positions keep their scale (as open_clip's own training does).
    return p.ndim >= 2


def param_groups(
    towers: Iterable[Iterable[tuple[str, torch.nn.Parameter]]],
    head: Iterable[tuple[str, torch.nn.Parameter]],
    *,
    encoder_lr: float,
    head_lr: float,
    weight_decay: float,
    layer_decay: float = 1.0,
) -> list[dict]:
    """AdamW groups; each carries ``base_lr`` so the schedule scales it. The head gets no weight
    decay, as in the frozen-mode training: its weights start at the warm phase's solution."""
    groups: dict[tuple[int, int, bool], dict] = {}
    for tower_index, tower in enumerate(towers):  # each tower's depth counts from its own input
        params = [(n, p) for n, p in tower if p.requires_grad]
        ids, num_blocks = layer_ids(n for n, _ in params)
        if layer_decay != 1.0 and params and not num_blocks:
            raise RadaError("layer-wise learning-rate decay needs encoder towers with numbered blocks; this model has none",
                            "use layer_decay=1.0 for this model", field="layer_decay")
        for name, p in params:
            depth = ids.get(name, num_blocks + 1)
            key = (tower_index, depth, _decays(p))
            group = groups.setdefault(key, {"params": [], "names": [],
                                            "base_lr": encoder_lr * layer_decay ** (num_blocks + 1 - depth),
                                            "weight_decay": weight_decay if key[2] else 0.0})
            group["params"].append(p)
            group["names"].append(name)
    out = [groups[k] for k in sorted(groups)]
    head = [(n, p) for n, p in head if p.requires_grad]
    if head:
        out.append({"params": [p for _, p in head], "names": [f"head.{n}" for n, _ in head], "base_lr": head_lr,
                    "weight_decay": 0.0})
    for group in out:
        group["lr"] = group["base_lr"]
    return out


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
