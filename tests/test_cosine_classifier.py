"""MultiHeadCosineClassifier and the score functions against DESIGN.md §1-4 written out by hand."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tde_det.modeling.cosine_classifier import (
    MultiHeadCosineClassifier,
    background_exempt_probs,
    exempt_logits,
    plain_probs,
    tde_logits,
    tde_probs,
)

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]
TAU, GAMMA, ALPHA = 16.0, 1.0 / 32.0, 1.5
R, C1, D = 6, 5, 8  # regions, C+1 outputs, feature dim


# ---------------------------------------------------------------- hand-written references
def ref_logits(w, x, K, tau=TAU, gamma=GAMMA):
    """§1 with explicit loops over regions, classes and heads (float64)."""
    w, x = w.double().cpu(), x.double().cpu()
    dk = x.shape[1] // K
    y = torch.zeros(x.shape[0], w.shape[0], dtype=torch.float64)
    for r in range(x.shape[0]):
        for i in range(w.shape[0]):
            total = 0.0
            for k in range(K):
                xk, wk = x[r, k * dk : (k + 1) * dk], w[i, k * dk : (k + 1) * dk]
                total += float(wk @ xk) / ((float(wk.norm()) + gamma) * float(xk.norm()))
            y[r, i] = tau / K * total
    return y


def ref_tde_logits(w, x, mean, K, alpha, tau=TAU, gamma=GAMMA):
    """§3 with explicit loops: y_i − α (τ/K) Σ_k cos(x^k, d̂^k) <w_i^k, d̂^k> / (‖w_i^k‖+γ)."""
    w, x, mean = w.double().cpu(), x.double().cpu(), mean.double().cpu()
    dk = x.shape[1] // K
    y = ref_logits(w, x, K, tau, gamma)
    for r in range(x.shape[0]):
        for i in range(w.shape[0]):
            total = 0.0
            for k in range(K):
                xk, wk = x[r, k * dk : (k + 1) * dk], w[i, k * dk : (k + 1) * dk]
                d_hat = mean[k * dk : (k + 1) * dk] / mean[k * dk : (k + 1) * dk].norm()
                cos = float(xk @ d_hat) / float(xk.norm())
                total += cos * float(wk @ d_hat) / (float(wk.norm()) + gamma)
            y[r, i] -= alpha * tau / K * total
    return y


def ref_exempt(y, y_tde):
    """§4 with explicit loops: bg = p_bg; fg_i = (1 − p_bg) q_i / (1 − q_bg)."""
    out = torch.zeros_like(y, dtype=torch.float64)
    for r in range(y.shape[0]):
        p = [math.exp(v) for v in y[r].tolist()]
        q = [math.exp(v) for v in y_tde[r].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        for i in range(y.shape[1] - 1):
            out[r, i] = (1 - p[-1]) * q[i] / (1 - q[-1])
        out[r, -1] = p[-1]
    return out


def make_classifier(K, device, momentum=0.9, seed=0, sync_mean=True):
    torch.manual_seed(seed)
    clf = MultiHeadCosineClassifier(D, C1, num_heads=K, scale=TAU, gamma=GAMMA, momentum=momentum, sync_mean=sync_mean)
    return clf.to(device)


# ---------------------------------------------------------------- formulas
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("K", [1, 2, 4])
def test_logits_tde_and_exempt_scores_match_hand_written_formulas(K, device):
    clf = make_classifier(K, device, seed=K)
    x = torch.randn(R, D, device=device) * 3
    mean = torch.randn(D, device=device)
    clf.mean_feature.copy_(mean)

    y, b = clf.logits_and_counterfactual(x)
    y_ref = ref_logits(clf.weight.detach(), x, K)
    tde_ref = ref_tde_logits(clf.weight.detach(), x, mean, K, ALPHA)
    torch.testing.assert_close(clf(x).double().cpu(), y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(y.double().cpu(), y_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close((y - ALPHA * b).double().cpu(), tde_ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(clf.counterfactual(x), b)

    scores = tde_probs(y, b, ALPHA, background_exempt=True)
    torch.testing.assert_close(scores.double().cpu(), ref_exempt(y_ref, tde_ref), atol=1e-5, rtol=0)
    no_exempt = tde_probs(y, b, ALPHA, background_exempt=False)
    torch.testing.assert_close(no_exempt.double().cpu(), torch.softmax(tde_ref, 1), atol=1e-5, rtol=0)


@pytest.mark.parametrize("K", [1, 2, 4])
def test_mean_cosine_is_per_head_cosine_to_mean_direction(K):
    clf = make_classifier(K, "cpu")
    x, mean = torch.randn(R, D), torch.randn(D)
    clf.mean_feature.copy_(mean)
    dk = D // K
    chunks = [slice(k * dk, (k + 1) * dk) for k in range(K)]
    ref = torch.stack([torch.cosine_similarity(x[:, c], mean[c][None], dim=1) for c in chunks], dim=1)
    torch.testing.assert_close(clf.mean_cosine(x), ref, atol=1e-6, rtol=0)


def test_alpha_zero_gives_exactly_the_plain_scores():
    clf = make_classifier(2, "cpu")
    clf.mean_feature.copy_(torch.randn(D))
    y, b = clf.logits_and_counterfactual(torch.randn(R, D))
    assert b.abs().max() > 0.1  # the counterfactual term is not trivially zero
    for exempt in (True, False):
        assert torch.equal(tde_probs(y, b, 0.0, exempt), plain_probs(y))
    # And the §4 formula itself reduces to softmax when TDE(y) = y.
    torch.testing.assert_close(background_exempt_probs(y, y), torch.softmax(y, 1), atol=1e-6, rtol=0)
    assert not torch.allclose(tde_probs(y, b, ALPHA, True), plain_probs(y), atol=1e-3)


@pytest.mark.parametrize("exempt", [True, False])
def test_tde_logits_softmax_is_the_score_and_zero_mean_is_exactly_plain(exempt):
    clf = make_classifier(2, "cpu")
    x = torch.randn(R, D) * 3
    y, b = clf.logits_and_counterfactual(x)
    # x̄ = 0: d̂ = 0 and b = 0 exactly, so the TDE logits are y itself, with no branch.
    assert torch.equal(b, torch.zeros_like(b))
    assert torch.equal(tde_logits(y, b, ALPHA, exempt), y)
    mean = torch.randn(D)
    clf.mean_feature.copy_(mean)
    y, b = clf.logits_and_counterfactual(x)
    tde_ref = ref_tde_logits(clf.weight.detach(), x, mean, 2, ALPHA)
    expected = ref_exempt(ref_logits(clf.weight.detach(), x, 2), tde_ref) if exempt else torch.softmax(tde_ref, 1)
    torch.testing.assert_close(torch.softmax(tde_logits(y, b, ALPHA, exempt), 1).double(), expected, atol=1e-5, rtol=0)
    for dtype in (torch.bfloat16, torch.float16):  # low-precision (autocast) inputs give fp32 logits
        assert tde_logits(y.to(dtype), b.to(dtype), ALPHA, exempt).dtype == torch.float32
    assert exempt_logits(y.double(), y.double()).dtype == torch.float64


@pytest.mark.parametrize("device", DEVICES)
def test_exempt_scores_keep_plain_background_and_fg_mass(device):
    torch.manual_seed(3)
    y = torch.randn(50, 11, device=device) * 4
    y[:10, -1] += 15  # some regions almost surely background (p_bg ~ 1)
    y_tde = y - 2.0 * torch.randn(50, 11, device=device)
    y_tde[10:15, -1] += 40  # q_bg ~ 1: the naive q_i / (1 - q_bg) would be 0/0
    s = background_exempt_probs(y, y_tde)
    p = torch.softmax(y.double(), 1)
    assert torch.isfinite(s).all() and (s >= 0).all()
    torch.testing.assert_close(s[:, -1].double(), p[:, -1], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(s[:, :-1].sum(1).double(), 1 - p[:, -1], atol=1e-6, rtol=1e-5)
    # Ranking among fg classes follows the TDE logits.
    assert torch.equal(s[:, :-1].argmax(1), y_tde[:, :-1].argmax(1))


def test_negative_alpha_rejected():
    with pytest.raises(ValueError, match="alpha"):
        tde_probs(torch.zeros(1, 2), torch.zeros(1, 2), -0.1)


# ---------------------------------------------------------------- degenerate inputs
@pytest.mark.parametrize("device", DEVICES)
def test_zero_feature_zero_weight_and_zero_mean_are_finite(device):
    clf = make_classifier(2, device)
    with torch.no_grad():
        clf.weight[1].zero_()  # a zero class weight
        clf.weight[2, : D // 2].zero_()  # a zero weight chunk
    x = torch.randn(4, D, device=device)
    x[0].zero_()  # a zero feature
    x[1, D // 2 :].zero_()  # a zero feature chunk
    y, b = clf.logits_and_counterfactual(x)
    assert torch.equal(b, torch.zeros_like(b))  # x̄ = 0: no counterfactual
    mean = torch.randn(D, device=device)
    mean[: D // 2] = 0  # a zero mean chunk
    clf.mean_feature.copy_(mean)
    y2, b2 = clf.logits_and_counterfactual(x)
    for t in (y, y2, b2, tde_probs(y2, b2, ALPHA), tde_probs(y2, b2, ALPHA, False)):
        assert torch.isfinite(t).all()
    assert torch.equal(y[0], torch.zeros_like(y[0])) and torch.equal(y[:, 1], torch.zeros_like(y[:, 1]))
    # The zero feature chunk contributes nothing: equals the single-head formula on the other chunk / K.
    half = ref_logits(clf.weight[:, : D // 2].detach(), x[1:2, : D // 2], 1)[0] / 2
    torch.testing.assert_close(y[1].double().cpu(), half, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- moving average §2
@pytest.mark.parametrize("device", DEVICES)
def test_mean_update_rule_training_only_and_empty_batch_noop(device):
    mu = 0.8
    clf = make_classifier(2, device, momentum=mu).train()
    assert not clf.has_mean
    a, b = torch.randn(3, D, device=device), torch.randn(5, D, device=device)
    clf.update_mean(a)
    torch.testing.assert_close(clf.mean_feature, (1 - mu) * a.mean(0))
    assert clf.has_mean
    clf.update_mean(b)
    expected = mu * (1 - mu) * a.mean(0) + (1 - mu) * b.mean(0)
    torch.testing.assert_close(clf.mean_feature, expected)
    before = clf.mean_feature.clone()
    clf.update_mean(torch.zeros(0, D, device=device))  # no foreground: unchanged
    assert torch.equal(clf.mean_feature, before)
    clf.eval()
    clf.update_mean(torch.randn(4, D, device=device))  # eval mode: unchanged
    assert torch.equal(clf.mean_feature, before)
    assert "mean_feature" in clf.state_dict()


def test_update_mean_rejects_wrong_width_and_keeps_no_graph():
    clf = make_classifier(2, "cpu").train()
    x = torch.randn(3, D, requires_grad=True)
    clf.update_mean(x * 2)
    assert not clf.mean_feature.requires_grad
    with pytest.raises(ValueError, match=r"\[R, 8\]"):
        clf.update_mean(torch.randn(3, D + 1))


def test_build_time_checks():
    # Each error names the argument and its config key (LazyConfig users pass the former).
    with pytest.raises(ValueError, match=r"not divisible by num_heads=3 \(MODEL.TDE.NUM_HEADS\)"):
        MultiHeadCosineClassifier(8, 3, num_heads=3)
    with pytest.raises(ValueError, match=r"scale=0.0 \(MODEL.TDE.SCALE"):
        MultiHeadCosineClassifier(8, 3, scale=0.0)
    with pytest.raises(ValueError, match=r"gamma=-1.0 \(MODEL.TDE.GAMMA\)"):
        MultiHeadCosineClassifier(8, 3, gamma=-1.0)
    with pytest.raises(ValueError, match=r"momentum=1.0 \(MODEL.TDE.MOMENTUM\) must be in \[0, 1\)"):
        MultiHeadCosineClassifier(8, 3, momentum=1.0)
    with pytest.raises(ValueError, match=r"num_heads=0 \(MODEL.TDE.NUM_HEADS\)"):
        MultiHeadCosineClassifier(8, 3, num_heads=0)


def test_gradient_reaches_weight_only():
    clf = make_classifier(2, "cpu").train()
    clf.mean_feature.copy_(torch.randn(D))
    x = torch.randn(R, D, requires_grad=True)
    torch.nn.functional.cross_entropy(clf(x), torch.randint(0, C1, (R,))).backward()
    assert clf.weight.grad is not None and clf.weight.grad.abs().sum() > 0
    assert x.grad.abs().sum() > 0


# ---------------------------------------------------------------- two processes (gloo)
def _batches(rank):
    """Per-step foreground features of each rank: step 1 one rank has none, step 2 both have none."""
    g = torch.Generator().manual_seed(100 + rank)
    sizes = [[3, 5], [0, 2], [0, 0]]
    return [torch.randn(s[rank], D, generator=g) * (rank + 1) for s in sizes]


def _dist_worker(rank, world_size, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        clf = make_classifier(2, "cpu", momentum=0.7).train()
        for fg_x in _batches(rank):
            clf.update_mean(fg_x)
        torch.save(clf.mean_feature, os.path.join(out_dir, f"mean{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_two_processes_share_one_mean_equal_to_single_process(tmp_path):
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    m0, m1 = torch.load(tmp_path / "mean0.pt"), torch.load(tmp_path / "mean1.pt")
    assert torch.equal(m0, m1)

    single = make_classifier(2, "cpu", momentum=0.7).train()
    for b0, b1 in zip(_batches(0), _batches(1)):
        single.update_mean(torch.cat([b0, b1]))
    torch.testing.assert_close(m0, single.mean_feature, atol=1e-6, rtol=1e-6)
    # Differs from what rank 0 alone would hold (so the sync did something).
    alone = make_classifier(2, "cpu", momentum=0.7).train()
    for b0 in _batches(0):
        alone.update_mean(b0)
    assert not torch.allclose(alone.mean_feature, m0, atol=1e-3)
