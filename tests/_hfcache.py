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


T5_STYLE_CORPUS = ["a photo of a cat", "a photo of a dog", "red square", "blue circle", "green triangle", "a bird in the sky",
                   "a car on the road", "the quick brown fox jumps over the lazy dog", "striped banded dotted zigzagged"] * 20


def add_t5_style_tokenizer(cache: Path, repo_id: str, vocab_size: int = 200) -> None:
    """A small SigLIP-like (T5-style: Unigram, Metaspace, "</s>" appended) tokenizer, built with the
    tokenizers library and saved through transformers, at the repository open_clip loads it from."""
    import tempfile

    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(T5_STYLE_CORPUS, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", tok.token_to_id("</s>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    with tempfile.TemporaryDirectory() as staging:
        fast.save_pretrained(staging)
        files = {p.name: p.read_bytes() for p in Path(staging).iterdir() if p.is_file()}
    files["config.json"] = json.dumps({"architecture": "vit_base_patch16_siglip_224"})  # the repo's timm config
    add_repo(cache, repo_id, files)
