"""The RAda head against DESIGN.md's equations, written out plainly here."""

from __future__ import annotations

import math

import pytest
import torch

from rada_export import RAdaHead
from rada_export.head import PROJECTION_NAMES, rada_loss


def plain_rada_logits(head: RAdaHead, f: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DESIGN.md literally, with loops and the full K x K matrix for every stream (float64)."""
    s, h, tau = head.logit_scale, head.num_heads, head.temperature
    B, D = f.shape
    K = t.shape[0]
    dh = D // h
    W = {n: (getattr(head, n).weight.double(), getattr(head, n).bias.double()) for n in PROJECTION_NAMES}
    lin = lambda name, x: x @ W[name][0].T + W[name][1]
    f, t = f.double(), t.double()
    logits = torch.zeros(B, K, dtype=torch.float64)
    masks = torch.zeros(B, K, D, dtype=torch.float64)
    for b in range(B):
        R = f[b][None, :] * t  # K x D
        q1 = lin("q_proj1", math.sqrt(s) * f[b]).expand(K, D)
        q2 = lin("q_proj2", math.sqrt(s) * t)
        q3 = lin("q_proj3", s * R)
        keys, values = lin("k_proj", s * R), lin("v_proj", s * R)
        heads_out = []
        for j in range(h):
            sl = slice(j * dh, (j + 1) * dh)
            total = torch.zeros(K, K, dtype=torch.float64)
            for q in (q1, q2, q3):
                scores = q[:, sl] @ keys[:, sl].T / math.sqrt(dh)
                total += K * torch.softmax((scores / tau).flatten(), 0).view(K, K)
            heads_out.append((total / 3) @ values[:, sl])
        O = lin("out_proj", torch.cat(heads_out, dim=1))
        M = torch.relu(1 + O)
        masks[b] = M
        logits[b] = s * (M * R).sum(-1)
    return logits, masks


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def random_head(dim=32, heads=8, temperature=1.0, scale=100.0, seed=0) -> RAdaHead:
    torch.manual_seed(seed)
    head = RAdaHead(dim, num_heads=heads, temperature=temperature, logit_scale=scale)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05)
    return head


def test_fresh_head_is_zero_shot_clip():
    torch.manual_seed(1)
    head = RAdaHead(64, logit_scale=100.0)
    f, t = unit(torch.randn(5, 64)), unit(torch.randn(9, 64))
    zero_shot = 100.0 * f @ t.T
    with torch.no_grad():
        assert (head(f, t) - zero_shot).abs().max() <= 1e-4
        assert torch.equal(head.mask(f, t), torch.ones(5, 9, 64))


@pytest.mark.parametrize("B,K,tau", [(1, 1, 1.0), (3, 7, 1.0), (4, 5, 0.5)])
def test_random_head_equals_plain_equations(B, K, tau):
    head = random_head(temperature=tau)
    torch.manual_seed(2)
    f, t = unit(torch.randn(B, 32)), unit(torch.randn(K, 32))
    ref_logits, ref_mask = plain_rada_logits(head, f, t)
    with torch.no_grad():
        logits, mask = head.logits_and_mask(f, t)
    rel = ((logits.double() - ref_logits).abs().max() / ref_logits.abs().max()).item()
    assert rel <= 1e-5
    assert ((mask.double() - ref_mask).abs().max() / ref_mask.abs().max()).item() <= 1e-5
    # The head changes logits away from zero-shot, so this comparison is not vacuous.
    assert (logits - 100.0 * f @ t.T).abs().max() > 1e-2


def test_loss_regulariser_is_max_abs_mask_deviation():
    head = random_head()
    f, t = unit(torch.randn(4, 32)), unit(torch.randn(6, 32))
    y = torch.tensor([0, 1, 2, 3])
    logits, mask = head.logits_and_mask(f, t)
    expected = torch.nn.functional.cross_entropy(logits, y) + 0.5 * torch.stack(
        [(mask[b] - 1).abs().max() for b in range(4)]).mean()
    assert torch.allclose(rada_loss(logits, mask, y, 0.5), expected)


def test_parameters_are_six_linears_of_the_reference_names():
    head = RAdaHead(512)
    names = dict(head.named_parameters())
    assert sorted(names) == sorted(f"{n}.{p}" for n in PROJECTION_NAMES for p in ("weight", "bias"))
    assert sum(p.numel() for p in head.parameters()) == 6 * (512 * 512 + 512)
    assert not head.out_proj.weight.any() and not head.out_proj.bias.any()


def test_invalid_configuration():
    with pytest.raises(ValueError, match="divisible"):
        RAdaHead(30, num_heads=8)
    with pytest.raises(ValueError, match="temperature"):
        RAdaHead(32, temperature=0)


def test_import_rada_export_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, rada_export; from rada_export import RadaError; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
