"""A local Hugging Face cache standing in for the hub (no network here).

open_clip fetches tagged weights and ``hf-hub:`` configs through ``huggingface_hub.hf_hub_download``;
pointing the hub's cache at a folder laid out the way huggingface_hub writes it, in offline mode,
redirects those downloads to local files while open_clip and huggingface_hub run unchanged.
Layout: https://huggingface.co/docs/huggingface_hub/guides/manage-cache
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

COMMIT = "0" * 40


def add_repo(cache: Path, repo_id: str, files: dict[str, Path | bytes | str]) -> Path:
    """Places files in cache as a snapshot of repo_id at `main`; returns the snapshot folder."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / COMMIT
    snap.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    for name, content in files.items():
        target = snap / name
        if isinstance(content, Path):
            target.unlink(missing_ok=True)
            target.symlink_to(content.resolve())
        else:
            target.write_bytes(content if isinstance(content, bytes) else content.encode())
    return snap


def save_random_weights(model: torch.nn.Module, path: Path, half: bool = True) -> Path:
    """Saves a model's (random) state_dict as safetensors; FP16 halves the disk a full-size test needs."""
    from safetensors.torch import save_file

    state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path))
    return path


def use_cache(monkeypatch, cache: Path) -> None:
    """Offline mode with `cache` as the hub cache, for this test only."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))


def open_clip_config(model_name: str, preprocess: dict) -> str:
    import open_clip

    return json.dumps({"model_cfg": open_clip.get_model_config(model_name), "preprocess_cfg": preprocess})
