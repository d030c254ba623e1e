"""Class names: the one check (runtimes/class_names.py) on every way in, through the real CLI
(`onnx --classes`, `train` class folders, `predict --classes`) and the real runtime's set_classes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rada_export.cli.app import app
from rada_export.errors import RadaError
from rada_export.prompts import parse_class_names
from rada_export.runtimes.class_names import MAX_NAME_LENGTH, check_class_names
from rada_export.runtimes.tokenizer import ClipTokenizer

TINY = ["--model", "rada-tiny-ViT", "--pretrained", "none"]
runner = CliRunner()

COMPOSED, DECOMPOSED = "caf\u00e9", "cafe\u0301"


def refused(args: list[str], work: Path, *needles: str) -> str:
    """Runs the CLI in-process: exit 2, one error line naming every needle, no traceback, nothing written."""
    before = sorted(p.relative_to(work).as_posix() for p in work.rglob("*"))
    old = os.getcwd()
    os.chdir(work)
    try:
        result = runner.invoke(app, args)
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text
    assert sorted(p.relative_to(work).as_posix() for p in work.rglob("*")) == before, "something was written"
    return text


@pytest.fixture(scope="module")
def bundle(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False)


@pytest.fixture
def work(tmp_path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    return tmp_path


# -- the check itself ------------------------------------------------------------------------------


@pytest.mark.parametrize("names, needles", [
    (["ca\nt", "dog"], ["'ca\\nt'", "a newline (U+000A)"]),
    (["ca\rt", "dog"], ["a carriage return (U+000D)"]),
    (["ca\tt", "dog"], ["a tab (U+0009)"]),
    (["cat\x00", "dog"], ["'cat\\x00'", "a NUL character (U+0000)"]),
    (["cat\x1b[31m", "dog"], ["U+001B"]),
    (["cat\u2028dog", "bird"], ["LINE SEPARATOR (U+2028)"]),
    (["cat\ud800", "dog"], ["lone surrogate (U+D800)"]),
    (["ca\ufefft", "dog"], ["byte order mark (U+FEFF)"]),
    (["cat<end_of_text>a", "cat<end_of_text>b"], ["'<end_of_text>'", "special token"]),
    (["cat<END_OF_TEXT>a", "dog"], ["'<end_of_text>'"]),
    (["cat&lt;end_of_text&gt;a", "dog"], ["'<end_of_text>'"]),
    (["cat\uff1cend_of_text\uff1ea", "dog"], ["'<end_of_text>'"]),
    (["<start_of_text>cat", "dog"], ["'<start_of_text>'"]),
    (["cat<|endoftext|>a", "dog"], ["'<|endoftext|>'"]),
    ([COMPOSED, DECOMPOSED], ["'caf\\xe9' and 'cafe\\u0301'", "Unicode normalisation forms", "NFC"]),
    (["Cat", "dog", "cat"], ["duplicate class names (ignoring case", "Cat, cat"]),
    (["cat", "dog", " cat "], ["duplicate class names: cat"]),
    (["cat", ""], ["empty name"]),
    ([], ["the class list is empty"]),
    (["cat"], ["at least two classes"]),
    (["x" * (MAX_NAME_LENGTH + 1), "y"], [f"the limit is {MAX_NAME_LENGTH}"]),
    (["cat", None], ["must be strings, got NoneType"]),
])
def test_refused_names_name_the_class_and_the_reason(names, needles):
    with pytest.raises(RadaError) as caught:
        check_class_names(names)
    assert caught.value.field == "classes" and caught.value.fix
    assert "\n" not in caught.value.problem  # one line, even for a name holding a newline
    for needle in needles:
        assert needle in caught.value.problem


def test_good_names_come_back_stripped_and_unchanged():
    names = ["  cat ", "d\u00f6g", "cafe", "a, b", "robot \U0001f916", "\u00e9t\u00e9", "ete", "x" * MAX_NAME_LENGTH]
    assert check_class_names(names) == [n.strip() for n in names]
    assert check_class_names("cat", minimum=1) == ["cat"]  # a string is one name, not letters


def test_the_refused_tokens_are_the_ones_the_tokenizer_stops_at(bundle):
    """Why typed special tokens are refused: the tokenizer turns every spelling of them into the
    end-of-text id, and the text encoder reads the text only up to the first one."""
    tokenizer = ClipTokenizer(next((bundle / "tokenizer").glob("*.txt.gz")))
    eot = tokenizer.encoder["<end_of_text>"]
    for spelling in ("<end_of_text>", "<END_OF_TEXT>", "&lt;end_of_text&gt;", "\uff1cend_of_text\uff1e"):
        ids = tokenizer([f"cat{spelling}tail"])[0]
        assert list(ids[:3]) == [tokenizer.encoder["<start_of_text>"], tokenizer.encoder["cat</w>"], eot], spelling
    # NFC and NFD spellings are one text to it as well.
    assert np.array_equal(tokenizer([COMPOSED]), tokenizer([DECOMPOSED]))


def test_class_file_byte_order_mark_is_not_part_of_the_first_name(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_bytes("\ufeffcat\r\ndog\r\n".encode())
    assert parse_class_names(str(path)) == ["cat", "dog"]
    path.write_bytes("cat\ndog\x00\n".encode())
    with pytest.raises(RadaError, match=r"'dog\\x00' holds a NUL character"):
        parse_class_names(str(path))


# -- through the CLI and the runtime ----------------------------------------------------------------


def test_onnx_refuses_names_that_would_break_the_bundle(work):
    out = str(work / "b")
    refused(["onnx", *TINY, "--classes", "cat,do\ng", "--out", out], work, "'do\\ng'", "a newline (U+000A)",
            "--classes")
    (work / "nul.txt").write_bytes(b"cat\ndo\x00g\n")
    refused(["onnx", *TINY, "--classes", str(work / "nul.txt"), "--out", out], work, "'do\\x00g'", "NUL")
    refused(["onnx", *TINY, "--classes", "cat<end_of_text>one,cat<end_of_text>two", "--out", out], work,
            "'cat<end_of_text>one'", "'<end_of_text>'")
    text = refused(["onnx", *TINY, "--no-verify", "--classes", f"{COMPOSED},{DECOMPOSED}", "--out", out], work,
                   "normalisation forms", "NFC")
    assert "77 tokens" not in text  # the old, wrong reason
    refused(["onnx", *TINY, "--classes", "cat,dog", "--template", "<end_of_text>{}", "--out", out], work,
            "'<end_of_text>'", "template")


def test_predict_refuses_bad_names_and_reads_a_windows_class_file(bundle, work):
    image = str(work / "img.png")
    refused(["predict", image, "--bundle", str(bundle), "--classes", "cat,do\rg"], work, "a carriage return (U+000D)")
    refused(["predict", image, "--bundle", str(bundle), "--classes", f"{DECOMPOSED},{COMPOSED}"], work,
            "normalisation forms")
    (work / "classes.txt").write_bytes("\ufeffcat\r\ndog\r\n".encode())  # Notepad's UTF-8
    result = runner.invoke(app, ["predict", image, "--bundle", str(bundle), "--classes", str(work / "classes.txt"),
                                 "--top", "2", "--json"])
    assert result.exit_code == 0, result.output
    top = json.loads(result.stdout.splitlines()[0])["top"]
    assert sorted(t["class"] for t in top) == ["cat", "dog"]


def test_train_refuses_a_class_folder_name_with_a_control_character(work):
    data = work / "data"
    for name in ("cat", "do\x1bg"):
        (data / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((32, 32, 3), 40 * i, dtype=np.uint8)).save(data / name / f"{i}.png")
    refused(["train", *TINY, "--data", str(data), "--out", str(work / "head.safetensors"), "--epochs", "1",
             "--quiet"], work, "'do\\x1bg'", "U+001B")


def test_runtime_set_classes_refuses_and_keeps_its_classes(bundle):
    from rada_export.runtimes import load_bundle

    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    image = np.random.default_rng(1).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    before = rt.predict([image]).logits
    for names in (["cat<end_of_text>a", "cat<end_of_text>b"], ["cat", "do\ng"], ["cat\x00", "dog"]):
        with pytest.raises(RadaError) as caught:
            rt.set_classes(names)
        assert repr(names[-1] if "\n" in names[-1] else names[0]) in caught.value.problem
    with pytest.raises(RadaError, match="duplicate|normalisation"):
        rt.set_classes([COMPOSED, DECOMPOSED])
    assert rt.classes == ["cat", "dog", "bird"]
    assert np.array_equal(rt.predict([image]).logits, before)
