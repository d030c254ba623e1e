"""The resumable state written after every epoch: weights, optimiser moments, best epoch, history.

One safetensors file beside the output (``head.safetensors`` -> ``head.resume.safetensors``):
tensors only, read without pickle, every tensor checked against the model it is loaded into.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..errors import RadaError

STATE_KEY = "rada_export_resume"
STATE_VERSION = 1


def state_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.resume.safetensors")


def save_state(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Atomic: a crash while writing leaves the previous epoch's state in place."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
        save_file(flat, tmp, metadata={STATE_KEY: json.dumps({**meta, "state_version": STATE_VERSION})})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    path = Path(path)
    fix = "start again with resume=False, or pass the out path of the interrupted run"
    if not path.is_file():
        raise RadaError(f"no resumable state at {path}", fix, field="resume")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(STATE_KEY)
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own types for a corrupt header
        raise RadaError(f"{path} is not a readable resume state ({err})", fix, field="resume") from err
    try:
        meta = json.loads(raw) if raw else None
    except ValueError:
        meta = None
    if not isinstance(meta, dict) or meta.get("state_version") != STATE_VERSION:
        raise RadaError(f"{path} is not a resume state this rada-export wrote", fix, field="resume")
    for key, value in tensors.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise RadaError(f"{path}: tensor {key} is not finite", fix, field="resume")
    return tensors, meta


def take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def put(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}{k}": v for k, v in tensors.items()}


def load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], keys: list[str], origin: str) -> None:
    """Copies exactly ``keys`` into ``module``; a missing, extra or misshapen tensor is an error."""
    own = module.state_dict()
    if set(tensors) != set(keys):
        missing = sorted(set(keys) - set(tensors))[:3]
        extra = sorted(set(tensors) - set(keys))[:3]
        raise RadaError(f"{origin} does not match this model (missing {missing}, unexpected {extra})",
                        "resume with the same model and options as the interrupted run", field="resume")
    for key in keys:
        if tuple(tensors[key].shape) != tuple(own[key].shape):
            raise RadaError(f"{origin}: {key} has shape {tuple(tensors[key].shape)}, the model {tuple(own[key].shape)}",
                            "resume with the same model and options as the interrupted run", field="resume")
    with torch.no_grad():
        for key in keys:
            own[key].copy_(tensors[key].to(own[key].dtype))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    out = {}
    for index, state in optimizer.state_dict()["state"].items():
        for name, value in state.items():
            out[f"{index}.{name}"] = value if isinstance(value, torch.Tensor) else torch.tensor(value)
    return out


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], origin: str) -> None:
    current = optimizer.state_dict()
    num_params = sum(len(g["params"]) for g in current["param_groups"])
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= num_params or name not in ("step", "exp_avg", "exp_avg_sq"):
            raise RadaError(f"{origin}: unexpected optimiser tensor {key}", "resume with the same model and options",
                            field="resume")
        params = [p for group in optimizer.param_groups for p in group["params"]]
        if name != "step" and tuple(value.shape) != tuple(params[int(index)].shape):
            raise RadaError(f"{origin}: optimiser tensor {key} has shape {tuple(value.shape)}, its parameter "
                            f"{tuple(params[int(index)].shape)}", "resume with the same model and options", field="resume")
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": current["param_groups"]})
