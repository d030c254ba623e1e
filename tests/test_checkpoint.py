"""Head checkpoints: our safetensors format and the paper's reference torch checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from rada_export import RadaError
from rada_export.checkpoint import HeadMetadata, load_head, save_head
from rada_export.head import RAdaHead


def trained_like_head(dim=64, seed=0) -> RAdaHead:
    torch.manual_seed(seed)
    head = RAdaHead(dim, logit_scale=50.0, temperature=0.7)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05)
    return head


def inputs(dim=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    f = torch.nn.functional.normalize(torch.randn(3, dim, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(5, dim, generator=g), dim=-1)
    return f, t


def test_safetensors_round_trip_is_bit_identical(tmp_path):
    head = trained_like_head()
    meta = HeadMetadata(embed_dim=64, model="rada-tiny-ViT", pretrained="none", class_names=list("abcde"),
                        templates=["a photo of a {}."], training={"epochs": 3})
    text = inputs()[1]
    save_head(tmp_path / "head.safetensors", head, meta, text_features=text)
    ckpt = load_head(tmp_path / "head.safetensors")
    f, t = inputs()
    with torch.no_grad():
        assert torch.equal(head(f, t), ckpt.head(f, t))
    assert ckpt.metadata.class_names == list("abcde")
    assert ckpt.metadata.temperature == 0.7 and ckpt.metadata.logit_scale == 50.0
    assert "torch" in ckpt.metadata.versions and ckpt.metadata.training["epochs"] == 3
    assert torch.equal(ckpt.text_features, text)


@pytest.mark.parametrize("wrapped", [True, False])
def test_reference_checkpoint_imports_and_reproduces_outputs(tmp_path, wrapped):
    head = trained_like_head()
    state = {f"mha.{k}": v.clone() for k, v in head.state_dict().items()}
    state["logit_scale_unused"] = torch.tensor(4.6)  # reference checkpoints may hold other tensors
    path = tmp_path / "model-best.pth.tar"
    torch.save({"state_dict": state, "epoch": 10} if wrapped else state, path)
    ckpt = load_head(path)
    ckpt.head.logit_scale, ckpt.head.temperature = 50.0, 0.7
    f, t = inputs()
    with torch.no_grad():
        assert torch.equal(head(f, t), ckpt.head(f, t))
    assert ckpt.metadata.embed_dim == 64


def test_pickled_objects_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("unpickled!",))

    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"mha.q_proj1.weight": torch.zeros(2, 2)}, "obj": Evil()}, path)
    with pytest.raises(RadaError, match="not a loadable torch checkpoint"):
        load_head(path)


@pytest.mark.parametrize("content,match", [
    (b"", "not a readable safetensors"),
    (b"hello world, not a checkpoint", "not a readable safetensors"),
])
def test_non_checkpoint_files(tmp_path, content, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(RadaError, match=match):
        load_head(path)


def test_missing_and_incomplete_checkpoints(tmp_path):
    with pytest.raises(RadaError, match="does not exist"):
        load_head(tmp_path / "nope.safetensors")
    torch.save({"state_dict": {"mha.q_proj1.weight": torch.zeros(4, 4)}}, tmp_path / "partial.pt")
    with pytest.raises(RadaError, match="lacks head parameters"):
        load_head(tmp_path / "partial.pt")


def test_truncated_safetensors(tmp_path):
    path = tmp_path / "head.safetensors"
    save_head(path, trained_like_head(), HeadMetadata(embed_dim=64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RadaError):
        load_head(path)


def test_metadata_is_plain_json(tmp_path):
    from safetensors import safe_open

    path = save_head(tmp_path / "h.safetensors", trained_like_head(), HeadMetadata(embed_dim=64, model="ViT-B-32"))
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["rada_export"])
    assert meta["model"] == "ViT-B-32" and meta["embed_dim"] == 64 and meta["num_heads"] == 8


def test_a_safetensors_header_length_that_looks_like_a_pickle_is_still_ours(tmp_path):
    # The first byte of a safetensors file is its header length's low byte; 0x80 is also a pickle's
    # first byte. Such a file (here made by padding a class name) must load as our checkpoint.
    head = trained_like_head()
    path = tmp_path / "head.safetensors"
    for pad in range(300):
        save_head(path, head, HeadMetadata(embed_dim=64, class_names=["a" * (pad + 1), "b"]))
        if path.read_bytes()[:1] == b"\x80":
            break
    assert path.read_bytes()[:1] == b"\x80"
    ckpt = load_head(path)
    assert ckpt.metadata.source == "rada-export" and ckpt.metadata.class_names[1] == "b"


def test_a_full_disk_while_saving_a_checkpoint_is_one_error(tmp_path):
    """A real write limit (RLIMIT_FSIZE with SIGXFSZ ignored: writes fail with EFBIG, as on a full or
    FAT32 disk): one RadaError naming the file, no temporary file left, nothing at the target."""
    import subprocess
    import sys

    script = (
        "import resource, signal, sys\n"
        "from rada_export.checkpoint import HeadMetadata, save_head\n"
        "from rada_export.errors import RadaError\n"
        "from rada_export.head import RAdaHead\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "try:\n"
        "    save_head(sys.argv[1], RAdaHead(512), HeadMetadata(embed_dim=512))\n"
        "except RadaError as err:\n"
        "    print(err.problem); sys.exit(2)\n"
    )
    out = tmp_path / "head.safetensors"
    run = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 2, run.stderr[-2000:]
    assert run.stdout.startswith(f"could not write the checkpoint {out}") and "Traceback" not in run.stderr
    assert list(tmp_path.iterdir()) == []
