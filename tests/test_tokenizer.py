"""The torch-free CLIP tokenizer gives open_clip's ids exactly, and fails clearly on bad input."""

from __future__ import annotations

import gzip
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rada_export.errors import RadaError
from rada_export.runtimes.tokenizer import ClipTokenizer

open_clip = pytest.importorskip("open_clip")

VOCAB_REL = "tokenizer/bpe_simple_vocab_16e6.txt.gz"


@pytest.fixture(scope="module")
def vocab_path() -> Path:
    return Path(open_clip.tokenizer.default_bpe())


@pytest.fixture(scope="module")
def reference():
    return open_clip.get_tokenizer("ViT-B-32")


@pytest.fixture(scope="module")
def tok(vocab_path) -> ClipTokenizer:
    return ClipTokenizer(vocab_path)


def _assert_same(tok, reference, texts, **kwargs):
    ours = tok(texts, **kwargs)
    theirs = reference(texts, **kwargs).numpy()
    assert ours.dtype == np.int64
    assert ours.shape == theirs.shape
    mismatched = [t for t, a, b in zip(texts if isinstance(texts, list) else [texts], ours, theirs) if not np.array_equal(a, b)]
    assert not mismatched, f"ids differ from open_clip for: {mismatched!r}"


TEXTS = [
    # class names, plain and awkward
    "dog", "golden retriever", "Yorkshire terrier", "jack-o'-lantern", "T-shirt", "CD player",
    "potter's wheel", "Granny Smith", "African elephant", "hot_dog", "water ouzel, dipper",
    # punctuation and contractions
    "Hello, world!", "what's up? it's fine; we'll see -- they'd've known...", "I'M SHOUTING!!!",
    "a/b\\c|d", "(parenthesised) [bracketed] {braced} <angled>", "\"quoted\" 'single'", "e-mail@example.com",
    "#hashtag @mention $100 50% 3*4=12 ~tilde^caret`", "...", "?!", "'s", "'",
    # digits (each digit is its own token)
    "0", "1234567890", "3.14159", "1,000,000", "route 66", "4K HDR 1080p", "12th century",
    # non-ASCII
    "café", "Crème brûlée", "naïve façade", "Ångström", "straße", "Ελληνικά", "Русский язык", "עברית",
    "العربية", "हिन्दी", "東京タワー", "北京烤鸭", "한국어 텍스트", "🐶", "a 🐱 and a 🐶", "👍🏽", "👨‍👩‍👧", "🇫🇷",
    "ﬁnancial", "Ⅻ", "½", "²", "µ", "™", "\u00a0non-breaking\u00a0space", "soft\u00adhyphen", "zero\u200bwidth",
    "Â©mojibake Ã©tÃ©",
    # html entities (double unescaping)
    "&amp;", "&amp;amp;", "fish &amp; chips", "&lt;b&gt;bold&lt;/b&gt;", "&quot;hi&quot;", "&#39;s", "&eacute;t&eacute;",
    "&nbsp;", "&unknown;",
    # whitespace
    "  leading", "trailing   ", "  many    inner \t\t spaces\n\nand lines  ", "\t", "\n", "   ",
    # special tokens typed in text
    "<start_of_text>", "a <end_of_text> b", "<START_OF_TEXT>",
    # empty
    "",
]


def test_vocabulary_matches_open_clip(tok, reference):
    assert tok.vocab_size == reference.vocab_size == 49408
    assert tok.sot_token_id == reference.sot_token_id
    assert tok.eot_token_id == reference.eot_token_id
    assert tok.encoder == reference.encoder


@pytest.mark.parametrize("text", TEXTS, ids=[repr(t)[:40] for t in TEXTS])
def test_single_text_matches_open_clip(tok, reference, text):
    _assert_same(tok, reference, text)


def test_batch_matches_open_clip(tok, reference):
    _assert_same(tok, reference, TEXTS)


def test_prompt_templates_match_open_clip(tok, reference):
    classes = ["tench", "goldfish", "great white shark", "jay", "mud turtle", "Chihuahua", "café au lait", "ox-cart"]
    templates = ["a photo of a {}.", "a bad photo of the {}.", "itap of a {}.", "a origami {}.", "art of the {}!"]
    prompts = [t.format(c) for c in classes for t in templates]
    _assert_same(tok, reference, prompts)


def test_random_unicode_matches_open_clip(tok, reference):
    rng = random.Random(1234)
    alphabet = (
        list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
        + list(" \t\n.,;:!?'\"-_()[]{}<>/\\@#$%^&*+=~`|")
        + list("éèêëàâäîïôöùûüçñßøåæœÆØÅ")
        + list("漢字中文日本語カタカナひらがな한국어")
        + ["😀", "🐍", "🚀", "❤️", "\u200d", "\u0301", "&amp;", "&lt;", "'s", "'ll"]
    )
    texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(150)]
    _assert_same(tok, reference, texts)


def test_truncation_keeps_eot_last(tok, reference):
    long = "a very long caption " * 40
    ours = tok(long)
    assert ours.shape == (1, 77)
    assert ours[0, 0] == tok.sot_token_id and ours[0, -1] == tok.eot_token_id
    assert (ours[0] != 0).all()
    _assert_same(tok, reference, long)


@pytest.mark.parametrize("n_words", [74, 75, 76, 77, 200])
def test_lengths_around_context_length(tok, reference, n_words):
    # "cat" is one token: n_words + 2 ids before truncation.
    _assert_same(tok, reference, " ".join(["cat"] * n_words))


@pytest.mark.parametrize("context_length", [2, 5, 16, 32])
def test_other_context_lengths(vocab_path, reference, context_length):
    tok = ClipTokenizer(vocab_path, context_length=context_length)
    texts = ["a photo of a dog.", "", "x " * 50, "🐶 " * 10]
    ours = tok(texts)
    assert ours.shape == (len(texts), context_length)
    assert np.array_equal(ours, reference(texts, context_length=context_length).numpy())
    # per-call override, as open_clip's __call__ takes it
    assert np.array_equal(tok(texts, context_length=77), reference(texts).numpy())


def test_empty_string_and_empty_list(tok, reference):
    ids = tok("")
    assert ids[0, 0] == tok.sot_token_id and ids[0, 1] == tok.eot_token_id and not ids[0, 2:].any()
    empty = tok([])
    assert empty.shape == (0, 77) and empty.dtype == np.int64
    assert empty.shape == tuple(reference([]).shape)


def test_tuple_input(tok, reference):
    texts = ("a dog", "a cat")
    assert np.array_equal(tok(texts), reference(list(texts)).numpy())


@pytest.mark.parametrize("clean", ["whitespace", "canonicalize"])
def test_other_cleaning_modes_match_open_clip(vocab_path, clean):
    reference = open_clip.tokenizer.SimpleTokenizer(str(vocab_path), clean=clean)
    tok = ClipTokenizer(vocab_path, clean=clean)
    texts = ["A Photo of a Dog.", "hot_dog & chips!", "  Mixed CASE   text  ", "Café", "it's"]
    assert np.array_equal(tok(texts), reference(texts).numpy())


def test_bpe_results_are_cached(vocab_path):
    tok = ClipTokenizer(vocab_path)
    first = tok("unbelievably photogenic")
    assert tok._cache, "words should be cached after the first call"
    cached = dict(tok._cache)
    assert np.array_equal(tok("unbelievably photogenic"), first)
    assert tok._cache == cached


def test_from_manifest_entry(tmp_path, vocab_path, reference):
    (tmp_path / "tokenizer").mkdir()
    shutil.copy(vocab_path, tmp_path / VOCAB_REL)
    entry = {"kind": "clip_bpe", "vocab": VOCAB_REL, "context_length": 77}
    tok = ClipTokenizer.from_manifest_entry(tmp_path, entry)
    assert tok.context_length == 77
    texts = ["a photo of a goldfish.", "a photo of a tench."]
    assert np.array_equal(tok(texts), reference(texts).numpy())
    short = ClipTokenizer.from_manifest_entry(str(tmp_path), {**entry, "context_length": 16})
    assert short(texts).shape == (2, 16)


@pytest.mark.parametrize("kind", ["hf", "siglip", None, "CLIP_BPE"])
def test_unknown_tokenizer_kind(tmp_path, kind):
    with pytest.raises(RadaError, match="not supported by the torch-free runtime yet"):
        ClipTokenizer.from_manifest_entry(tmp_path, {"kind": kind, "vocab": VOCAB_REL, "context_length": 64})


def test_empty_manifest_entry(tmp_path):
    with pytest.raises(RadaError, match="no usable tokenizer entry"):
        ClipTokenizer.from_manifest_entry(tmp_path, {})


def test_missing_vocab_file(tmp_path):
    with pytest.raises(RadaError, match="bpe_simple_vocab_16e6.txt.gz does not exist") as err:
        ClipTokenizer.from_manifest_entry(tmp_path, {"kind": "clip_bpe", "vocab": VOCAB_REL, "context_length": 77})
    assert str(tmp_path) in str(err.value)
    with pytest.raises(RadaError, match="names no vocabulary file"):
        ClipTokenizer.from_manifest_entry(tmp_path, {"kind": "clip_bpe", "context_length": 77})


def test_corrupt_vocab_file(tmp_path):
    not_gzip = tmp_path / "vocab.txt.gz"
    not_gzip.write_bytes(b"this is not gzip")
    with pytest.raises(RadaError, match="not a readable gzip"):
        ClipTokenizer(not_gzip)
    too_short = tmp_path / "short.txt.gz"
    with gzip.open(too_short, "wt", encoding="utf-8") as fh:
        fh.write("#version: 0.2\ni n\nt h\n")
    with pytest.raises(RadaError, match="merges"):
        ClipTokenizer(too_short)


@pytest.mark.parametrize("bad", [b"bytes", 42, None, ["ok", 3], ["ok", None]])
def test_bad_text_input(tok, bad):
    with pytest.raises(RadaError, match="str"):
        tok(bad)


@pytest.mark.parametrize("context_length", [0, 1, -5, 7.5, "77", True])
def test_bad_context_length(vocab_path, tok, context_length):
    with pytest.raises(RadaError, match="context_length"):
        ClipTokenizer(vocab_path, context_length=context_length)
    with pytest.raises(RadaError, match="context_length"):
        tok("a dog", context_length=context_length or -1)


def test_bad_clean_mode(vocab_path):
    with pytest.raises(RadaError, match="cleaning"):
        ClipTokenizer(vocab_path, clean="upper")


def test_import_leaves_torch_out():
    code = (
        "import sys, rada_export.runtimes.tokenizer; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision')); "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


def test_context_length_is_bounded(vocab_path):
    from rada_export.runtimes.bundle.tokenizers import MAX_CONTEXT_LENGTH

    assert ClipTokenizer(vocab_path, context_length=MAX_CONTEXT_LENGTH).context_length == MAX_CONTEXT_LENGTH
    with pytest.raises(RadaError, match=f"to {MAX_CONTEXT_LENGTH}"):
        ClipTokenizer(vocab_path, context_length=10 ** 9)


def test_a_vocabulary_that_expands_past_its_bound_is_refused(tmp_path):
    bomb = tmp_path / "bomb.txt.gz"
    bomb.write_bytes(gzip.compress(b"\n" * (65 << 20), compresslevel=1))
    with pytest.raises(RadaError, match="expands to more than 64 MiB"):
        ClipTokenizer(bomb)


@pytest.mark.parametrize("entry,needle", [
    ({"kind": "clip_bpe", "vocab": VOCAB_REL, "context_length": "77"}, "'context_length' must be int"),
    ({"kind": "clip_bpe", "vocab": 3, "context_length": 77}, "'vocab' must be str"),
    ({"kind": "clip_bpe", "vocab": VOCAB_REL, "context_length": True}, "'context_length' must be int"),
    ({"kind": "clip_bpe", "vocab": VOCAB_REL, "context_length": 5000}, "outside [2, 4096]"),
    ({"kind": "hf_tokenizers", "file": "tokenizer/tokenizer.json", "context_length": 64, "pad_id": -1}, "pad_id is -1"),
    ({"kind": "hf_tokenizers", "context_length": 64}, "names no tokenizer file"),
])
def test_the_registry_checks_each_kinds_fields(tmp_path, entry, needle):
    from rada_export.runtimes.tokenizer import load_tokenizer

    with pytest.raises(RadaError) as err:
        load_tokenizer(tmp_path, entry)
    assert needle in str(err.value)


def test_one_constant_per_kind():
    from rada_export.export import hf_tokenizer as export_hf
    from rada_export.runtimes import hf_tokenizer, tokenizer
    from rada_export.runtimes.bundle import tokenizers

    assert export_hf.KIND_HF is tokenizers.KIND_HF is hf_tokenizer.KIND_HF
    assert tokenizer.KIND_CLIP_BPE is tokenizers.KIND_CLIP_BPE and set(tokenizers.KINDS) == {"clip_bpe", "hf_tokenizers"}
