"""Weight-space ensembling with the pretrained encoder (WiSE-FT).

theta = (1 - alpha) * theta_pretrained + alpha * theta_finetuned, tensor by tensor: alpha 1 is the
fine-tuned encoder, alpha 0 the pretrained one. Only floating-point tensors mix; integer buffers
(if a tower has any) must agree and are kept.
"""

from __future__ import annotations

import torch

from ..errors import RadaError


def interpolate(pretrained: dict[str, torch.Tensor], finetuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    if not 0.0 <= alpha <= 1.0:
        raise RadaError(f"wise alpha must lie in [0, 1], got {alpha}", "use e.g. wise=0.5", field="wise")
    if set(pretrained) != set(finetuned):
        raise RadaError("the pretrained and fine-tuned encoders hold different tensors",
                        "ensemble an encoder with its own pretrained weights")
    mixed = {}
    for key, tuned in finetuned.items():
        base = pretrained[key]
        if base.shape != tuned.shape:
            raise RadaError(f"{key}: pretrained shape {tuple(base.shape)} differs from fine-tuned {tuple(tuned.shape)}",
                            "ensemble an encoder with its own pretrained weights")
        if tuned.is_floating_point():
            mixed[key] = torch.lerp(base.to(tuned.dtype), tuned, alpha)
        else:
            mixed[key] = tuned.clone()
    return mixed
