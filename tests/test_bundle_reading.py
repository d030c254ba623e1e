"""Reading a bundle changes nothing: every byte, name and mtime of the bundle's tree, and of the folder
around it (where an interrupted swap's leftover waits for the next writer), is the same after
load_bundle, predict, verify and `trt --check`."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from rada_export.cli.app import app
from rada_export.runtimes import load_bundle
from rada_export.runtimes.manifest import read_manifest

from test_bundle_items import add_recorded_engine, dead_leftover


def tree_digest(root: Path) -> str:
    """One sha256 over every entry under root: path, kind, bytes (or link target), mode and mtime."""
    digest = hashlib.sha256()
    for folder, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(folder, name)
            st = os.lstat(path)
            digest.update(f"{os.path.relpath(path, root)}|{st.st_mode}|{st.st_mtime_ns}|".encode())
            if os.path.islink(path):
                digest.update(os.readlink(path).encode())
            elif os.path.isfile(path):
                with open(path, "rb") as fh:
                    digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def test_reading_changes_nothing(tmp_path, shared_tiny_bundle):
    from PIL import Image

    bundle = tmp_path / "bundle"
    shutil.copytree(shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False), bundle)
    add_recorded_engine(bundle)
    leftover = dead_leftover(bundle)
    image = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(image)
    before = tree_digest(tmp_path)

    read_manifest(bundle)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    rt.predict([str(image)])
    rt.set_classes(["pear", "plum"])
    assert tree_digest(tmp_path) == before
    runner = CliRunner()
    for args in (["predict", str(image), "--bundle", str(bundle)],
                 ["predict", str(image), "--bundle", str(bundle), "--json", "--classes", "pear,plum"],
                 ["verify", "--bundle", str(bundle), "-q"],
                 ["trt", "--bundle", str(bundle), "--check"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output)
        assert tree_digest(tmp_path) == before, args
    assert leftover.is_dir()
