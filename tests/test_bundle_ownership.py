"""The bundle owner's ownership rule as a pure function over folder trees, and on real folders.

Ours: the manifest, the files it lists, and engines whose JSON records them as `rada-export trt`'s
(engine_file and engine_sha256 matching the engine's bytes). Everything else, at any depth, is the
user's, and one such entry makes a folder irreplaceable.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from rada_export.runtimes.bundle.ownership import (DIR, FILE, LINK, OTHER, Entry, Tree, bundle_verdict, judge,
                                                   scan_tree)

LISTED = {"manifest.json", "model.onnx", "model.onnx.data", "classes.txt", "tokenizer/bpe_simple_vocab_16e6.txt.gz"}
ENGINE_BYTES = b"serialized engine bytes"
ENV = "engines/nvidia-orin-sm87-trt10.3.0"


def engine_json(name: str = "model.fp16.engine", digest: str | None = None, **extra) -> bytes:
    meta = {"format": 1, "graph": "model", "precision": "fp16", "engine_file": name,
            "engine_sha256": digest or hashlib.sha256(ENGINE_BYTES).hexdigest(), "tensorrt_version": "10.3.0",
            "gpu_name": "Orin", "compute_capability": "8.7", **extra}
    return json.dumps(meta).encode()


def bundle_tree(*extra: Entry) -> Tree:
    base = [Entry("manifest.json", FILE), Entry("model.onnx", FILE), Entry("model.onnx.data", FILE),
            Entry("classes.txt", FILE), Entry("tokenizer", DIR), Entry("tokenizer/bpe_simple_vocab_16e6.txt.gz", FILE)]
    return Tree.of(base + list(extra))


def recorded_engine(name: str = "model.fp16.engine") -> list[Entry]:
    return [Entry("engines", DIR), Entry(ENV, DIR),
            Entry(f"{ENV}/{name}", FILE, sha256=hashlib.sha256(ENGINE_BYTES).hexdigest()),
            Entry(f"{ENV}/{name[:-len('.engine')]}.json", FILE, text=engine_json(name))]


def test_only_listed_files_is_replaceable():
    verdict = judge(bundle_tree(), LISTED)
    assert verdict.replaceable and verdict.foreign == ()
    assert set(verdict.ours) == LISTED | {"tokenizer"}


@pytest.mark.parametrize("rel", ["NOTES.md", "tokenizer/notes.txt", "tokenizer/deep/er/notes.txt", "a/b/c/d/e.jpg"])
def test_a_user_file_at_any_depth_makes_it_irreplaceable(rel):
    parents = [Entry(Path(rel).parents[i].as_posix(), DIR) for i in range(len(Path(rel).parts) - 1)]
    verdict = judge(bundle_tree(*{e.rel: e for e in parents}.values(), Entry(rel, FILE)), LISTED)
    assert not verdict.replaceable and rel in verdict.foreign
    assert rel not in verdict.ours


def test_an_empty_user_folder_is_the_users():
    verdict = judge(bundle_tree(Entry("my_folder", DIR)), LISTED)
    assert verdict.foreign == ("my_folder/",)


def test_engines_trt_recorded_are_ours():
    verdict = judge(bundle_tree(*recorded_engine(), *recorded_engine("image_encoder.fp16.engine")[2:]), LISTED)
    assert verdict.replaceable, verdict.foreign
    assert f"{ENV}/model.fp16.engine" in verdict.ours and f"{ENV}/model.fp16.json" in verdict.ours


@pytest.mark.parametrize("case", ["no json", "json for another engine", "sha mismatch", "json not json", "json lacks gpu",
                                  "engine too shallow", "user file beside", "json alone"])
def test_engines_without_a_matching_record_are_the_users(case):
    engine, description = recorded_engine()[2:]
    entries = [Entry("engines", DIR), Entry(ENV, DIR)]
    if case == "no json":
        entries += [engine]
    elif case == "json for another engine":
        entries += [engine, Entry(description.rel, FILE, text=engine_json("image_encoder.fp16.engine"))]
    elif case == "sha mismatch":
        entries += [engine, Entry(description.rel, FILE, text=engine_json(digest="0" * 64))]
    elif case == "json not json":
        entries += [engine, Entry(description.rel, FILE, text=b"{not json")]
    elif case == "json lacks gpu":
        meta = json.loads(engine_json())
        del meta["gpu_name"]
        entries += [engine, Entry(description.rel, FILE, text=json.dumps(meta).encode())]
    elif case == "engine too shallow":
        entries += [Entry("engines/model.fp16.engine", FILE, sha256=engine.sha256),
                    Entry("engines/model.fp16.json", FILE, text=engine_json())]
    elif case == "user file beside":
        entries += [engine, description, Entry(f"{ENV}/my_trtexec.engine", FILE, sha256="1" * 64)]
    elif case == "json alone":
        entries += [description]
    verdict = judge(bundle_tree(*entries), LISTED)
    assert not verdict.replaceable
    if case == "user file beside":
        assert verdict.foreign == (f"{ENV}/my_trtexec.engine",)


def test_an_engines_folder_left_empty_is_ours():
    assert judge(bundle_tree(Entry("engines", DIR), Entry(ENV, DIR)), LISTED).replaceable


@pytest.mark.parametrize("kind", [LINK, OTHER])
def test_links_and_special_files_are_never_ours_even_under_a_listed_name(kind):
    tree = Tree.of([e for e in bundle_tree().entries if e.rel != "classes.txt"] + [Entry("classes.txt", kind)])
    verdict = judge(tree, LISTED)
    assert verdict.foreign == ("classes.txt",)


def test_real_folder_with_links_and_engines(tmp_path):
    bundle = tmp_path / "b"
    (bundle / "tokenizer").mkdir(parents=True)
    for rel in LISTED:
        (bundle / rel).write_bytes(b"x")
    (bundle / "manifest.json").write_text(json.dumps({"schema_version": 1, "graphs": {}, "files": {r: "0" * 64 for r in LISTED
                                                                                                  if r != "manifest.json"}}))
    env = bundle / ENV
    env.mkdir(parents=True)
    (env / "model.fp16.engine").write_bytes(ENGINE_BYTES)
    (env / "model.fp16.json").write_bytes(engine_json())
    assert bundle_verdict(bundle).replaceable
    (env / "model.fp16.engine").write_bytes(ENGINE_BYTES + b"changed")  # no longer the engine trt recorded
    assert bundle_verdict(bundle).foreign == (f"{ENV}/model.fp16.engine", f"{ENV}/model.fp16.json")
    (env / "model.fp16.engine").write_bytes(ENGINE_BYTES)
    os.symlink(bundle / "classes.txt", bundle / "tokenizer" / "link.txt")  # a link inside, even to our file
    assert bundle_verdict(bundle).foreign == ("tokenizer/link.txt",)
    assert bundle_verdict(tmp_path) is None  # no manifest of ours: not a bundle at all


def test_scan_refuses_a_folder_it_cannot_list(tmp_path):
    """A folder whose path is longer than the system allows cannot be listed (ENAMETOOLONG): the scan
    says so instead of leaving its files out (root reads any folder, so permissions cannot show it)."""
    from rada_export import RadaError

    deep_file = make_unlistable(tmp_path / "b")
    with pytest.raises(RadaError, match="cannot list .*its files would be left out"):
        scan_tree(tmp_path / "b")
    assert read_deep(deep_file) == b"mine"


def make_unlistable(root: Path) -> list[str]:
    """Folders nested under ``root`` until their path passes PATH_MAX, a file of the user's at the
    bottom; returns the chain of names (open it with read_deep)."""
    root.mkdir(parents=True, exist_ok=True)
    names = ["d" * 200] * 24  # 24 x 201 characters: past Linux's 4096
    fd = os.open(root, os.O_RDONLY)
    try:
        for name in names:
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open("photo.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(file_fd, b"mine")
        os.close(file_fd)
    finally:
        os.close(fd)
    return [str(root), *names]


def read_deep(chain: list[str]) -> bytes:
    fd = os.open(chain[0], os.O_RDONLY)
    try:
        for name in chain[1:]:
            child = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        file_fd = os.open("photo.jpg", os.O_RDONLY, dir_fd=fd)
        data = os.read(file_fd, 100)
        os.close(file_fd)
        return data
    finally:
        os.close(fd)
