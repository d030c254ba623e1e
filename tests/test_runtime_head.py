"""The torch-free head (runtimes/head.py) against the reference RAdaHead, and its TTA mechanics."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rada_export.errors import RadaError  # noqa: E402
from rada_export.head import RAdaHead  # noqa: E402
from rada_export.runtimes import head_math, losses  # noqa: E402
from rada_export.runtimes.adamw import AdamState, adamw_step  # noqa: E402
from rada_export.runtimes.head import PARAMETER_NAMES, Head  # noqa: E402
from rada_export.runtimes.tta import TTAConfig  # noqa: E402

import gradcheck  # noqa: E402

D = 512
SCALE = 100.0


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unit(rows: int, dim: int = D, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def torch_head(seed: int = 0, temperature: float = 1.0, zero_out: bool = False, dim: int = D) -> RAdaHead:
    """A reference head with nn.Linear's random init everywhere, out_proj included (unless zero_out)."""
    torch.manual_seed(seed)
    head = RAdaHead(dim, num_heads=8, temperature=temperature, logit_scale=SCALE)
    if not zero_out:
        with torch.no_grad():
            bound = 1.0 / np.sqrt(dim)
            head.out_proj.weight.uniform_(-bound, bound)
            head.out_proj.bias.uniform_(-bound, bound)
    return head


def numpy_weights(head: RAdaHead) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in head.state_dict().items()}


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).max() / max(np.abs(b).max(), 1e-30))


# ---------------------------------------------------------------------------------------------
# Forward parity


@pytest.mark.parametrize("num_classes", [1, 7])
@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_logits_and_mask_match_torch(num_classes, batch, temperature):
    ref = torch_head(seed=num_classes + batch, temperature=temperature)
    text, feats = unit(num_classes, seed=1), unit(batch, seed=2)
    head = Head(numpy_weights(ref), text, logit_scale=SCALE, temperature=temperature)
    with torch.no_grad():
        logits, mask = ref.logits_and_mask(torch.from_numpy(feats), torch.from_numpy(text))
    assert head.logits(feats).shape == (batch, num_classes)
    assert head.logits(feats).dtype == np.float32
    assert rel(head.logits(feats), logits.numpy()) <= 1e-5
    assert rel(head.mask(feats), mask.numpy()) <= 1e-5
    assert float((mask.numpy() != 1).mean()) > 0.5  # out_proj really is non-zero


@pytest.mark.parametrize("num_classes", [1, 7])
@pytest.mark.parametrize("batch", [1, 5])
def test_fresh_head_is_zero_shot(num_classes, batch):
    text, feats = unit(num_classes, seed=3), unit(batch, seed=4)
    head = Head(numpy_weights(torch_head(zero_out=True)), text, logit_scale=SCALE)
    zero_shot = SCALE * feats.astype(np.float64) @ text.astype(np.float64).T
    assert rel(head.logits(feats), zero_shot) <= 1e-5
    assert np.array_equal(head.mask(feats), np.ones((batch, num_classes, D), np.float32))


def test_large_batches_are_chunked_without_changing_results(monkeypatch):
    ref = torch_head(dim=64)
    text, feats = unit(9, 64, seed=5), unit(11, 64, seed=6)
    head = Head(numpy_weights(ref), text, logit_scale=SCALE)
    whole = head.logits(feats)
    monkeypatch.setattr(head_math, "ATTENTION_BUDGET", 8 * 9 * 9 * 3)  # three rows per chunk
    assert len(head_math.chunks(11, 9, 8)) == 4
    assert rel(head.logits(feats), whole) <= 1e-6
    assert rel(head.mask(feats), ref.mask(torch.from_numpy(feats), torch.from_numpy(text)).detach().numpy()) <= 1e-5


# ---------------------------------------------------------------------------------------------
# Gradients against autograd


def assert_gradients_match(numpy_grads: dict[str, np.ndarray], ref: RAdaHead, tol: float = 1e-4) -> dict[str, float]:
    errors = {}
    for name, param in ref.named_parameters():
        assert param.grad is not None, name
        expected = param.grad.numpy()
        assert numpy_grads[name].shape == expected.shape
        assert np.abs(expected).max() > 0, f"{name} gets no gradient: the check would be empty"
        errors[name] = rel(numpy_grads[name], expected)
    worst = max(errors, key=errors.get)
    print(f"worst relative gradient error {errors[worst]:.2e} ({worst})")
    assert errors[worst] <= tol, errors
    return errors


def torch_marginal_entropy(logits: torch.Tensor) -> torch.Tensor:
    logp = logits.log_softmax(-1)
    avg = torch.logsumexp(logp, dim=0) - np.log(logits.shape[0])
    return -(avg.exp() * avg).sum()


def test_episodic_gradient_matches_autograd():
    ref = torch_head(seed=7)
    text, views = unit(7, seed=8), unit(16, seed=9)
    cfg = TTAConfig(mode="episodic", keep=0.25)
    head = Head(numpy_weights(ref), text, logit_scale=SCALE, tta=cfg)
    feats_t, text_t = torch.from_numpy(views), torch.from_numpy(text)
    logits = ref(feats_t, text_t)
    entropy = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    chosen = torch.argsort(entropy, stable=True)[:4]
    np_entropy = losses.entropy(head.logits(views))
    assert sorted(chosen.tolist()) == sorted(np.argsort(np_entropy, kind="stable")[:4].tolist())
    loss = torch_marginal_entropy(logits[chosen])
    ref.zero_grad()
    loss.backward()
    assert abs(gradcheck.episodic_loss(head, views) - loss.item()) <= 1e-4 * abs(loss.item())
    assert_gradients_match(gradcheck.episodic_gradients(head, views), ref)


def test_continual_gradient_matches_autograd_including_anchors():
    deployed = torch_head(seed=10)
    text, warmup, feats = unit(7, seed=11), unit(12, seed=12), unit(6, seed=13)
    # Move the weights away from the deployed ones, so that the weight anchor has a gradient.
    drift_cfg = TTAConfig(continual_batch=1, continual_lr=1e-3, e_margin=1.0, collapse_share=1.0)
    drifted = Head(numpy_weights(deployed), text, logit_scale=SCALE, tta=drift_cfg)
    for row in warmup:
        drifted.adapt(row[None])
    assert drifted.updates > 0
    # A threshold between the frames' entropies, so that some count as confident and some not.
    ent = losses.entropy(drifted.logits(feats))
    e_margin = float(np.sort(ent)[2:4].mean() / np.log(7))
    cfg = TTAConfig(e_margin=e_margin, anchor=3.0, mask_anchor=2.0)
    head = Head(numpy_weights(deployed), text, logit_scale=SCALE, tta=cfg)
    state = drifted.state()
    head.load_state(state)

    ref = torch_head(seed=10)
    with torch.no_grad():
        for name, param in ref.named_parameters():
            param.copy_(torch.from_numpy(state[f"weights.{name}"]))
    logits, mask = ref.logits_and_mask(torch.from_numpy(feats), torch.from_numpy(text))
    h = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1)
    limit = e_margin * np.log(7)
    confident = h.detach() < limit
    assert 0 < int(confident.sum()) < len(feats)
    weight = torch.exp(limit - h.detach()[confident])
    loss = (weight * h[confident]).mean() + cfg.mask_anchor * ((mask[confident] - 1) ** 2).mean()
    for name, param in ref.named_parameters():
        loss = loss + 0.5 * cfg.anchor * ((param - deployed.state_dict()[name]) ** 2).sum()
    ref.zero_grad()
    loss.backward()
    assert abs(gradcheck.continual_loss(head, feats) - loss.item()) <= 1e-4 * abs(loss.item())
    assert_gradients_match(gradcheck.continual_gradients(head, feats), ref)


def test_vector_jacobian_product_matches_autograd_with_zero_init_head():
    ref = torch_head(seed=14, zero_out=True)
    text, feats = unit(5, seed=15), unit(3, seed=16)
    head = Head(numpy_weights(ref), text, logit_scale=SCALE)
    rng = np.random.default_rng(17)
    d_logits = rng.normal(size=(3, 5)).astype(np.float32)
    d_mask = rng.normal(size=(3, 5, D)).astype(np.float32)
    logits, mask = ref.logits_and_mask(torch.from_numpy(feats), torch.from_numpy(text))
    ((logits * torch.from_numpy(d_logits)).sum() + (mask * torch.from_numpy(d_mask)).sum()).backward()
    grads = gradcheck.vjp_gradients(head, feats, d_logits, d_mask)
    # With out_proj at zero only out_proj gets a gradient; the rest must be exactly zero too.
    for name, param in ref.named_parameters():
        expected = param.grad.numpy()
        if np.abs(expected).max() == 0:
            assert np.abs(grads[name]).max() == 0, name
        else:
            assert rel(grads[name], expected) <= 1e-4, name


def reference_adamw(params, grads, lr, weight_decay, betas, eps):
    """torch.optim.AdamW's documented update, in float64 (torch's own optimizer takes seconds
    to import, which this test can do without)."""
    p = params.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        p *= 1 - lr * weight_decay
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        p -= lr * (m / (1 - betas[0] ** t)) / (np.sqrt(v / (1 - betas[1] ** t)) + eps)
    return p


def test_adamw_matches_the_torch_update():
    rng = np.random.default_rng(18)
    params = rng.normal(size=70_000).astype(np.float32)  # more than one block
    start = params.copy()
    grads = [rng.normal(size=params.size).astype(np.float32) for _ in range(4)]
    state = AdamState.zeros(params.size)
    scratch = np.empty_like(params)
    for grad in grads:
        adamw_step(
            params, grad.copy(), state, lr=1e-2, weight_decay=0.05, betas=(0.8, 0.99), eps=1e-6, scratch=scratch
        )
    expected = reference_adamw(start, grads, 1e-2, 0.05, (0.8, 0.99), 1e-6)
    assert state.step == 4
    assert rel(params - start, expected - start) <= 1e-4  # float32 rounding of params near 1


def test_adamw_anchor_and_restore_pull_toward_the_reference():
    rng = np.random.default_rng(19)
    reference = rng.normal(size=1000).astype(np.float32)
    params = reference + 0.1
    grad = np.zeros_like(params)
    state, scratch = AdamState.zeros(params.size), np.empty_like(params)
    adamw_step(params, grad.copy(), state, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                           scratch=scratch, restore=0.5, reference=reference)
    assert np.allclose(params - reference, 0.05, atol=1e-6)  # restore alone: half the drift undone
    state.clear()
    adamw_step(params, grad.copy(), state, lr=1e-3, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8,
                           scratch=scratch, anchor=10.0, reference=reference)
    assert np.allclose(params - reference, 0.05 - 1e-3, atol=1e-6)  # anchor: an Adam step toward it


# ---------------------------------------------------------------------------------------------
# Episodic


def test_episodic_step_lowers_entropy_and_resets():
    ref = torch_head(seed=19)
    text, views = unit(7, seed=20), unit(16, seed=21)
    head = Head(numpy_weights(ref), text, logit_scale=SCALE, tta=TTAConfig(mode="episodic", keep=0.25))
    deployed_logits = head.logits(views)
    deployed_weights = head.weights()

    logits = head.adapt_episodic(views)
    report = head.last_episode
    assert logits.shape == (1, 7)
    assert report is not None and report.steps == 1 and len(report.kept) == 4
    assert report.loss_after < report.loss_before
    assert abs(report.loss_before - gradcheck.episodic_loss(head, views)) <= 1e-5
    assert not np.array_equal(logits, deployed_logits[:1])  # the prediction came from adapted weights
    # The next call sees the deployed head again.
    assert all(np.array_equal(head.weights()[k], deployed_weights[k]) for k in PARAMETER_NAMES)
    assert np.array_equal(head.logits(views), deployed_logits)
    assert head.updates == 1 and head.counters.episodes == 1
    # Episodes are independent: the same image gives the same answer again.
    assert np.array_equal(head.adapt_episodic(views), logits)


def test_episodic_original_can_be_given_separately():
    ref = torch_head(seed=22)
    text, views = unit(5, seed=23), unit(8, seed=24)
    head = Head(numpy_weights(ref), text, logit_scale=SCALE, tta=TTAConfig(mode="episodic", steps=2))
    a = head.adapt_episodic(views, original=views[3])
    b = head.adapt_episodic(views, original=views[3:4])
    assert a.shape == (1, 5) and np.array_equal(a, b)
    assert head.last_episode.steps == 2
    with pytest.raises(RadaError, match="one image"):
        head.adapt_episodic(views, original=views[:2])


# ---------------------------------------------------------------------------------------------
# Continual mechanics


def adaptive_head(seed: int = 25, **overrides) -> tuple[Head, np.ndarray]:
    settings = dict(continual_batch=4, continual_lr=1e-3, e_margin=1.0, collapse_share=1.0)
    settings.update(overrides)
    ref = torch_head(seed=seed, dim=64)
    text = unit(6, 64, seed=seed + 1)
    return Head(numpy_weights(ref), text, logit_scale=SCALE, tta=TTAConfig(**settings)), unit(40, 64, seed=seed + 2)


def test_adapt_returns_predictions_before_the_update():
    head, frames = adaptive_head(continual_batch=1)
    before = head.logits(frames[:1])
    assert np.array_equal(head.adapt(frames[:1]), before)
    assert head.updates == 1 and head.adapted
    assert not np.array_equal(head.logits(frames[:1]), before)


def test_frames_are_gathered_into_batches():
    head, frames = adaptive_head(continual_batch=4)
    for i in range(3):
        head.adapt(frames[i : i + 1])
    assert head.updates == 0 and head.pending_frames == 3
    head.adapt(frames[3:5])
    assert head.updates == 1 and head.pending_frames == 0


def test_unconfident_frames_do_not_update():
    probe, frames = adaptive_head()
    lowest = float(losses.entropy(probe.logits(frames[:5])).min())
    head, _ = adaptive_head(e_margin=0.5 * lowest / np.log(6), continual_batch=1)
    for row in frames[:5]:
        head.adapt(row[None])
    assert head.updates == 0 and head.skipped_unconfident == 5 and not head.adapted


def test_nonfinite_forward_is_skipped_and_counted():
    head, frames = adaptive_head(continual_batch=1)
    weights = head.weights()
    huge = np.full((1, 64), 1e19, np.float32)  # finite input whose scores overflow float32
    logits = head.adapt(huge)
    assert not np.isfinite(logits).all()
    assert head.skipped_nonfinite == 1 and head.updates == 0
    assert all(np.array_equal(head.weights()[k], weights[k]) for k in PARAMETER_NAMES)
    head.adapt(frames[:1])
    assert head.updates == 1 and np.isfinite(head.logits(frames)).all()


def test_nonfinite_gradient_is_skipped_and_counted(monkeypatch):
    head, frames = adaptive_head(continual_batch=1)
    weights = head.weights()
    real_backward = head_math.backward

    def poisoned(*args):
        real_backward(*args)
        args[-1].w_out[0, 0] = np.nan

    monkeypatch.setattr(head_math, "backward", poisoned)
    head.adapt(frames[:1])
    head.adapt_episodic(frames[:8])
    assert head.skipped_nonfinite == 2 and head.updates == 0
    assert all(np.array_equal(head.weights()[k], weights[k]) for k in PARAMETER_NAMES)
    monkeypatch.setattr(head_math, "backward", real_backward)
    head.adapt(frames[1:2])
    assert head.updates == 1


def test_reset_restores_deployed_outputs_exactly():
    head, frames = adaptive_head(continual_batch=2)
    deployed = head.logits(frames)
    for row in frames[:20]:
        head.adapt(row[None])
    assert head.updates >= 5 and not np.array_equal(head.logits(frames), deployed)
    head.reset()
    assert np.array_equal(head.logits(frames), deployed)
    assert not head.adapted and head.pending_frames == 0 and int(head.state()["adam.step"]) == 0
    assert head.updates >= 5  # counters describe the whole run


def test_state_round_trip_gives_identical_outputs(tmp_path):
    head, frames = adaptive_head(continual_batch=3, collapse_share=None, collapse_window=8)
    for row in frames[:10]:
        head.adapt(row[None])
    assert head.pending_frames == 1  # a step is half gathered: it must survive the round trip
    path = tmp_path / "state.npz"
    np.savez(path, **head.state())
    twin, _ = adaptive_head(continual_batch=3, collapse_share=None, collapse_window=8)
    twin.load_state(dict(np.load(path)))
    for row in frames[10:]:
        assert np.array_equal(head.adapt(row[None]), twin.adapt(row[None]))
    assert np.array_equal(head.logits(frames), twin.logits(frames))
    assert vars(head.counters) == vars(twin.counters)
    assert head.state().keys() == twin.state().keys()


def test_load_state_refuses_another_heads_state():
    head, frames = adaptive_head(seed=25)
    other, _ = adaptive_head(seed=40)
    before = head.logits(frames)
    with pytest.raises(RadaError, match="other deployed weights"):
        head.load_state(other.state())
    broken = head.state()
    del broken["adam.step"]
    with pytest.raises(RadaError, match="adam.step"):
        head.load_state(broken)
    assert np.array_equal(head.logits(frames), before)


def test_collapse_guard_resets_an_adapted_head():
    # Naive entropy minimisation with a big step: the head soon predicts one class.
    head, frames = adaptive_head(continual_batch=1, continual_lr=5e-2, anchor=0.0, mask_anchor=0.0,
                                 collapse_share=0.6, collapse_window=10)
    for _ in range(10):
        for row in frames:
            head.adapt(row[None])
    assert head.resets >= 1


def test_guard_leaves_a_dominated_stream_alone_when_not_adapted():
    head, frames = adaptive_head(continual_lr=0.0, collapse_share=0.3, collapse_window=10)
    for _ in range(30):
        head.adapt(frames[:1])  # one image over and over: one class, genuinely
    assert head.resets == 0 and head.updates == 0


def test_set_text_features_changes_classes_and_keeps_adaptation():
    head, frames = adaptive_head(continual_batch=1)
    for row in frames[:5]:
        head.adapt(row[None])
    adapted = head.weights()
    head.set_text_features(unit(3, 64, seed=99))
    assert head.num_classes == 3 and head.logits(frames).shape == (40, 3)
    assert all(np.array_equal(head.weights()[k], adapted[k]) for k in PARAMETER_NAMES)
    head.adapt(frames[:1])


# ---------------------------------------------------------------------------------------------
# Input checks


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 63), np.float32), r"shape \(2, 63\), expected a B x 64"),
        (np.zeros(64, np.float32), r"shape \(64,\), expected a B x 64"),
        (np.zeros((0, 64), np.float32), r"shape \(0, 64\)"),
        (np.zeros((2, 64), np.int64), "dtype int64, expected floating point"),
        (np.full((1, 64), np.nan, np.float32), "NaN"),
        (np.full((1, 64), 1e300), "NaN or infinite"),
        ([[1.0, 2.0], [3.0]], "array"),
    ],
)
def test_bad_features_raise_and_leave_the_head_usable(bad, match):
    head, frames = adaptive_head(continual_batch=1)
    before = head.logits(frames)
    for method in (head.logits, head.mask, head.adapt, head.adapt_episodic):
        with pytest.raises(RadaError, match=match):
            method(bad)
    assert np.array_equal(head.logits(frames), before)
    assert head.frames == 0 and head.updates == 0
    head.adapt(frames[:1])
    assert head.updates == 1


def test_bad_weights_and_settings_raise():
    ref = torch_head(dim=64)
    weights, text = numpy_weights(ref), unit(3, 64)
    missing = dict(weights)
    del missing["k_proj.bias"]
    with pytest.raises(RadaError, match="k_proj.bias"):
        Head(missing, text, logit_scale=SCALE)
    wrong = dict(weights, **{"v_proj.weight": np.zeros((64, 32), np.float32)})
    with pytest.raises(RadaError, match="v_proj.weight"):
        Head(wrong, text, logit_scale=SCALE)
    with pytest.raises(RadaError, match="num_heads"):
        Head(weights, text, logit_scale=SCALE, num_heads=7)
    with pytest.raises(RadaError, match="logit_scale"):
        Head(weights, text, logit_scale=-1.0)
    with pytest.raises(RadaError, match="text_features"):
        Head(weights, unit(3, 32), logit_scale=SCALE)
    # The paper's checkpoints name the projections under "mha."
    prefixed = {f"mha.{k}": v for k, v in weights.items()}
    assert np.array_equal(Head(prefixed, text, logit_scale=SCALE).logits(unit(2, 64)),
                          Head(weights, text, logit_scale=SCALE).logits(unit(2, 64)))


# ---------------------------------------------------------------------------------------------
# Bundle and imports


def write_bundle(folder, weights, text, num_heads=8, temperature=1.0):
    from safetensors.numpy import save_file

    from rada_export.runtimes.manifest import HeadConfig, Manifest, Preprocess, checksum_files, write_manifest

    folder.mkdir()
    save_file({**weights, "text_features": text}, str(folder / "head.safetensors"))
    np.save(folder / "text_features.npy", text)
    manifest = Manifest(
        model="test", pretrained="none", embed_dim=text.shape[1],
        preprocess=Preprocess([224, 224], "RGB", [0.5] * 3, [0.5] * 3, "bicubic", "shortest"),
        logit_scale=SCALE, head=HeadConfig(text.shape[1], num_heads, temperature, SCALE),
        class_names=[f"c{i}" for i in range(len(text))], templates=["{}"], context_length=77,
        opset=17, max_batch=8, graphs={},
        files=checksum_files(folder, ["head.safetensors", "text_features.npy"]),
    )
    write_manifest(folder, manifest)


def test_from_bundle(tmp_path):
    ref = torch_head(dim=64, temperature=0.5)
    weights, text = numpy_weights(ref), unit(4, 64)
    write_bundle(tmp_path / "bundle", weights, text, temperature=0.5)
    head = Head.from_bundle(tmp_path / "bundle")
    feats = unit(3, 64, seed=1)
    expected = ref(torch.from_numpy(feats), torch.from_numpy(text)).detach().numpy()
    assert rel(head.logits(feats), expected) <= 1e-5
    assert head.spec.temperature == 0.5 and head.num_classes == 4
    # A modified file is refused.
    np.save(tmp_path / "bundle" / "text_features.npy", text[:2])
    with pytest.raises(RadaError, match="checksum"):
        Head.from_bundle(tmp_path / "bundle")


def test_runtime_modules_do_not_import_torch():
    code = (
        "import sys; import rada_export.runtimes.head, rada_export.runtimes.tta, rada_export.runtimes.augment, "
        "rada_export.runtimes.tokenizer, rada_export.runtimes.hf_tokenizer; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip', 'torchvision')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_head_does_not_alias_caller_buffers():
    head, frames = adaptive_head(continual_batch=3)
    text = head.text_features
    buffer = text.copy()
    head.set_text_features(buffer)
    before = head.logits(frames)
    buffer[:] = 0.0  # the caller reuses its buffer
    assert np.array_equal(head.logits(frames), before)
    frame = frames[:1].copy()
    head.adapt(frame)
    saved = head.state()["pending.0.features"].copy()
    frame[:] = 0.0
    assert np.array_equal(head.state()["pending.0.features"], saved)


def test_an_episode_during_continual_adaptation_keeps_the_continual_weights():
    head, frames = adaptive_head(continual_batch=1)
    for row in frames[:4]:
        head.adapt(row[None])
    continual = head.weights()
    pending_before = head.pending_frames
    head.adapt_episodic(frames[10:26])
    assert head.adapted and head.pending_frames == pending_before
    assert all(np.array_equal(head.weights()[k], continual[k]) for k in PARAMETER_NAMES)
    assert not all(np.array_equal(head.weights(deployed=True)[k], continual[k]) for k in PARAMETER_NAMES)


# ---------------------------------------------------------------------------------------------
# The class set and snapshots


def test_the_head_owns_its_class_set():
    head, frames = adaptive_head()
    assert head.class_names == tuple(f"class {i}" for i in range(6))  # numbered when none are given
    names = ("cat", "dog", "bird")
    text = unit(3, 64, seed=50)
    head.set_classes(names, text)
    snap = head.snapshot()
    assert snap.class_names == names == head.class_names and snap.num_classes == 3
    assert np.array_equal(snap.text_features, text) and not snap.text_features.flags.writeable
    assert head.logits(frames).shape == (40, 3)
    head.set_text_features(unit(3, 64, seed=51))  # same count: the same classes, other prompts
    assert head.class_names == names
    head.set_text_features(unit(2, 64, seed=52))
    assert head.class_names == ("class 0", "class 1")
    with pytest.raises(RadaError, match="2 class names for 3 rows"):
        head.set_classes(["a", "b"], text)
    with pytest.raises(RadaError, match="sequence of str"):
        head.set_classes("abc", text)
    assert head.class_names == ("class 0", "class 1")  # a refused change leaves the set as it was


def test_a_snapshot_keeps_its_weights_and_classes_while_the_head_moves_on():
    head, frames = adaptive_head(continual_batch=1)
    snap = head.snapshot()
    before = head.logits(frames)
    for row in frames[:5]:
        head.adapt(row[None])
    head.set_classes(["a", "b"], unit(2, 64, seed=53))
    assert head.updates == 5 and head.snapshot() is not snap
    assert np.array_equal(head.logits(frames, snapshot=snap), before)
    assert snap.num_classes == 6 and not snap.adapted and head.snapshot().adapted
    other = Head(numpy_weights(torch_head(dim=32)), unit(2, 32), logit_scale=SCALE)
    with pytest.raises(RadaError, match="snapshot"):
        other.logits(unit(1, 32), snapshot=snap)
    with pytest.raises(RadaError, match="snapshot"):
        head.logits(frames, snapshot=("not", "a", "snapshot"))


def test_adapt_batches_equals_adapt_in_a_row():
    one, frames = adaptive_head(continual_batch=3)
    two, _ = adaptive_head(continual_batch=3)
    batches = [frames[0:2], frames[2:3], frames[3:7]]
    logits, names = one.adapt_batches(batches)
    assert names == one.class_names
    assert np.array_equal(logits, np.concatenate([two.adapt(b) for b in batches]))
    assert all(np.array_equal(one.weights()[k], two.weights()[k]) for k in PARAMETER_NAMES)
    with pytest.raises(RadaError, match="shape"):
        one.adapt_batches([frames[:1], frames[:1, :10]])  # checked before any batch adapts
    assert one.frames == two.frames == 7
