"""DPSH, HashNet and DSH: losses against loops over pairs, DPSH's memory, HashNet's continuation,
multi-label similarity, save/load, and a small "it learns" check per method."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from schn.codes import to_signed
from schn.errors import SchnError
from schn.methods import create_method
from schn.methods.dpsh import DPSHConfig, dpsh_loss
from schn.methods.dsh import DSHConfig, dsh_loss
from schn.methods.hashnet import HashNetConfig, continuation_beta, hashnet_loss, label_jaccard
from schn.metrics import mean_average_precision

MULTI = torch.tensor([[1, 1, 0], [0, 1, 0], [0, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=torch.float)


def shares_label(a, b) -> float:
    return 1.0 if any(x > 0 and y > 0 for x, y in zip(a.tolist(), b.tolist())) else 0.0


def loop_similarity(a, b):
    return torch.tensor([[shares_label(x, y) for y in b] for x in a])


def sign(x: float) -> float:
    return 1.0 if x >= 0 else -1.0


def dot(u, v) -> float:
    return sum(float(p) * float(q) for p, q in zip(u, v))


# ----- DPSH -----
def test_dpsh_loss_matches_loops():
    gen = torch.Generator().manual_seed(0)
    U, V = torch.randn(3, 4, generator=gen) * 2, torch.randn(5, 4, generator=gen) * 2
    S = loop_similarity(MULTI[:3], MULTI)
    eta = 10.0
    pair = sum(math.log1p(math.exp(dot(U[i], V[j]) / 2)) - float(S[i, j]) * dot(U[i], V[j]) / 2
               for i in range(3) for j in range(5))
    quant = sum((sign(float(U[i, k])) - float(U[i, k])) ** 2 for i in range(3) for k in range(4))
    # the paper's sum over the batch's pairs, divided by its number of pairs (3 x 5)
    expected = (pair + eta * quant) / 15
    got = dpsh_loss(U, V, S, eta)
    assert got["loss"].item() == pytest.approx(expected, rel=1e-5)
    assert got["pair"].item() == pytest.approx(pair / 15, rel=1e-5)
    assert got["quantization"].item() == pytest.approx(quant / 3, rel=1e-5)


def test_dpsh_loss_is_stable_for_large_inner_products():
    U = torch.full((2, 4), 30.0)  # Theta = 1800: exp overflows in float32
    got = dpsh_loss(U, U, torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 10.0)
    assert torch.isfinite(got["loss"])
    assert got["pair"].item() == pytest.approx(1800 / 2, rel=1e-5)  # softplus(T) - s T = T on the 2 s=0 pairs


def dpsh_method(n=10, bits=4, **options):
    labels = torch.eye(3)[torch.arange(n) % 3]
    return create_method("dpsh", options or None, nn.Identity(), 6, 3, bits, labels, "cpu"), labels


def test_dpsh_memory_rows_updated_and_gradient_only_through_the_batch():
    method, labels = dpsh_method()
    gen = torch.Generator().manual_seed(1)
    first = torch.tensor([2, 5])
    U1 = torch.randn(2, 4, generator=gen)
    method.compute_losses(U1, labels[first], first)
    assert torch.equal(method.memory[first], U1) and method.seen.nonzero().squeeze(1).tolist() == [2, 5]
    assert not method.memory.requires_grad

    second = torch.tensor([5, 7])
    U2 = torch.randn(2, 4, generator=gen, requires_grad=True)
    terms = method.compute_losses(U2, labels[second], second)
    rows = [2, 5, 7]  # every position seen so far; row 5 now holds the fresh output
    assert method.seen.nonzero().squeeze(1).tolist() == rows
    assert torch.equal(method.memory[2], U1[0]) and torch.equal(method.memory[[5, 7]], U2.detach())
    V = method.memory[rows].clone()
    expected = dpsh_loss(U2.detach(), V, loop_similarity(labels[second], labels[rows]), 10.0)["loss"]
    assert terms["loss"].item() == pytest.approx(expected.item(), rel=1e-6)

    terms["loss"].backward()
    # d/dU of the pairs (memory constant) + quantisation: only the batch side carries gradient
    S = loop_similarity(labels[second], labels[rows])
    m, n = 2, 3
    theta = U2.detach() @ V.T / 2
    analytic = (torch.sigmoid(theta) - S) @ V / 2 / (m * n) \
        + 10.0 / n * 2 * (U2.detach() - to_signed(U2.detach())) / m
    assert torch.allclose(U2.grad, analytic, atol=1e-6)
    assert method.memory.grad is None


# ----- HashNet -----
def test_continuation_beta_schedule():
    # official: beta recomputed every 200 steps as (1 + 0.005 t)^0.5 and kept in between
    for step, beta in [(0, 1.0), (1, 1.0), (199, 1.0), (200, math.sqrt(2)), (399, math.sqrt(2)),
                       (400, math.sqrt(3)), (1000, math.sqrt(6)), (10000, math.sqrt(51))]:
        assert continuation_beta(step) == pytest.approx(beta)
    assert continuation_beta(10, init_scale=2.0, gamma=0.5, power=1.0, step_size=4) == pytest.approx(2 * (1 + 0.5 * 8))


def test_hashnet_step_counter_drives_beta_in_training():
    labels = torch.eye(3)[torch.arange(6) % 3]
    method = create_method("hashnet", {"gamma": 0.5, "step_size": 2, "lr": 1e-3}, nn.Identity(), 6, 3, 4,
                           labels, "cpu")
    x, pos = torch.randn(6, 6), torch.arange(6)
    betas = [method.training_step(x, labels, pos, record=False)["beta"] for _ in range(5)]
    # the step being taken counts (official: iter_num is incremented before the forward pass)
    assert betas == pytest.approx([1.0, math.sqrt(2), math.sqrt(2), math.sqrt(3), math.sqrt(3)])
    assert int(method.continuation_step) == 5


def test_label_jaccard_matches_sets():
    got = label_jaccard(MULTI, MULTI)
    for i, j in itertools.product(range(5), repeat=2):
        a = {k for k in range(3) if MULTI[i, k] > 0}
        b = {k for k in range(3) if MULTI[j, k] > 0}
        assert got[i, j].item() == pytest.approx(len(a & b) / len(a | b))
    assert label_jaccard(torch.zeros(1, 3), torch.zeros(1, 3)).item() == 0.0


@pytest.mark.parametrize("continuous", [False, True])
def test_hashnet_loss_matches_the_paper_weights_in_loops(continuous):
    gen = torch.Generator().manual_seed(2)
    H = torch.tanh(torch.randn(5, 3, generator=gen) * 2)
    S = loop_similarity(MULTI, MULTI)
    alpha = 10 / 3
    pairs = [(i, j) for i in range(5) for j in range(5) if i != j]
    S1 = sum(1 for i, j in pairs if S[i, j] > 0)
    S0 = len(pairs) - S1
    total = 0.0
    for i, j in pairs:
        ip = alpha * dot(H[i], H[j])
        nll = math.log1p(math.exp(ip)) - float(S[i, j]) * ip
        shared = dot(MULTI[i], MULTI[j])
        c = shared / (float(MULTI[i].sum() + MULTI[j].sum()) - shared) if continuous else 1.0
        w = c * len(pairs) / S1 if S[i, j] > 0 else len(pairs) / S0
        total += w * nll
    C = label_jaccard(MULTI, MULTI) if continuous else None
    assert hashnet_loss(H, S, alpha, C)["loss"].item() == pytest.approx(total / len(pairs), rel=1e-5)


def test_hashnet_loss_without_similar_pairs_and_for_one_item():
    H = torch.randn(3, 4, requires_grad=True)
    out = hashnet_loss(H, torch.eye(3), 1.0)  # only self pairs are similar: none counted
    assert out["similar"].item() == 0.0 and torch.isfinite(out["loss"])
    one = hashnet_loss(H[:1], torch.ones(1, 1), 1.0)["loss"]
    one.backward()  # no pair at all: 0, still differentiable
    assert one.item() == 0.0


def test_hashnet_encode_sign_is_sign_of_head_output():
    labels = torch.eye(3)[torch.arange(6) % 3]
    method = create_method("hashnet", None, nn.Identity(), 6, 3, 4, labels, "cpu")
    method.continuation_step.fill_(5000)
    x = torch.randn(6, 6)
    z = method.image_net(x)[1].detach()
    assert torch.equal(to_signed(method.encode(x)), to_signed(z))
    assert torch.allclose(method.encode(x), torch.tanh(method.beta() * z))


# ----- DSH -----
def test_dsh_loss_matches_loops():
    gen = torch.Generator().manual_seed(3)
    U = torch.randn(5, 3, generator=gen) * 1.5
    margin, alpha = 6.0, 0.01
    terms = []
    for i, j in itertools.combinations(range(5), 2):
        d = sum((float(U[i, k]) - float(U[j, k])) ** 2 for k in range(3))
        y = 1.0 - shares_label(MULTI[i], MULTI[j])
        reg = sum(abs(abs(float(U[p, k])) - 1) for p in (i, j) for k in range(3))
        terms.append(0.5 * (1 - y) * d + 0.5 * y * max(margin - d, 0.0) + alpha * reg)
    got = dsh_loss(U, loop_similarity(MULTI, MULTI), margin, alpha)["loss"]
    assert got.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_dsh_defaults_and_one_item_batch():
    labels = torch.eye(3)[torch.arange(6) % 3]
    method = create_method("dsh", None, nn.Identity(), 6, 3, 12, labels, "cpu")
    assert method.margin == 24.0 and method.config.alpha == 0.01  # m = 2k
    terms = method.training_step(torch.randn(1, 6), labels[:1], torch.tensor([0]), record=False)
    assert np.isfinite(terms["loss"])


# ----- multi-label similarity, every method -----
def test_methods_use_shared_label_similarity_on_multi_label_batches():
    gen = torch.Generator().manual_seed(4)
    U = torch.randn(5, 4, generator=gen)
    S = loop_similarity(MULTI, MULTI)  # e.g. [1,1,0] ~ [0,1,0], [1,1,0] !~ [0,0,1]
    assert S[0, 1] == 1 and S[0, 2] == 0 and S[0, 3] == 1
    pos = torch.arange(5)

    def build(name, config=None):
        return create_method(name, config, nn.Identity(), 6, 3, 4, MULTI, "cpu")

    dpsh = build("dpsh")
    assert dpsh.compute_losses(U, MULTI, pos)["loss"].item() == pytest.approx(
        dpsh_loss(U, U, S, 10.0)["loss"].item(), rel=1e-6)
    hashnet = build("hashnet")
    H = torch.tanh(U)  # beta = 1 before any step
    assert hashnet.compute_losses(U, MULTI, pos)["loss"].item() == pytest.approx(
        hashnet_loss(H, S, 10 / 4, label_jaccard(MULTI, MULTI))["loss"].item(), rel=1e-6)
    dsh = build("dsh")
    assert dsh.compute_losses(U, MULTI, pos)["loss"].item() == pytest.approx(
        dsh_loss(U, S, 8.0, 0.01)["loss"].item(), rel=1e-6)


# ----- configs -----
@pytest.mark.parametrize("cls,options", [
    (DPSHConfig, {"eta": -1.0}), (HashNetConfig, {"alpha": 0.0}), (HashNetConfig, {"step_size": 0}),
    (HashNetConfig, {"init_scale": 0.0}), (HashNetConfig, {"gamma": -0.1}), (DSHConfig, {"margin": -2.0}),
    (DSHConfig, {"alpha": -0.01}), (DSHConfig, {"lr": 0.0}),
])
def test_configs_reject_bad_values(cls, options):
    with pytest.raises(SchnError, match=next(iter(options))):
        cls(**options)


# ----- save / load -----
@pytest.mark.parametrize("name", ["dpsh", "hashnet", "dsh"])
def test_save_load_round_trip(name):
    torch.manual_seed(5)
    labels = torch.eye(3)[torch.arange(12) % 3]
    x = torch.randn(12, 6)
    config = {"lr": 1e-2, "step_size": 2} if name == "hashnet" else {"lr": 1e-2}
    method = create_method(name, config, nn.Identity(), 6, 3, 4, labels, "cpu")
    for start in (0, 4, 8):
        pos = torch.arange(start, start + 4)
        method.training_step(x[pos], labels[pos], pos, record=True)
    again = create_method(name, config, nn.Identity(), 6, 3, 4, labels, "cpu")
    again.load_state_dict(method.state_dict())
    assert torch.equal(again.encode(x), method.encode(x))
    if name == "hashnet":
        assert int(again.continuation_step) == 3 and again.beta() == method.beta() > 1
        # continuation resumes where it stopped
        assert again.training_step(x[:4], labels[:4], torch.arange(4), False)["beta"] == pytest.approx(
            continuation_beta(4, gamma=0.005, step_size=2))
    if name == "dpsh":
        assert torch.equal(again.memory, method.memory) and bool(again.seen.all())


# ----- it learns -----
def clusters(n_per_class, gen):
    """3 well separated Gaussian clusters in 3 of 16 dimensions; the other 13 are louder noise,
    so a random head ranks poorly (mAP ~0.4-0.5) and a trained one must find the 3."""
    y = torch.arange(3).repeat_interleave(n_per_class)
    x = torch.randn(len(y), 16, generator=gen) * 3
    x[:, :3] = torch.randn(len(y), 3, generator=gen) + 4.0 * torch.eye(3)[y]
    return x, torch.eye(3)[y]


def retrieval_map(method, xq, yq, xd, yd) -> float:
    codes_q = to_signed(method.encode(xq)).numpy()
    codes_d = to_signed(method.encode(xd)).numpy()
    return mean_average_precision(codes_q, codes_d, yq.numpy(), yd.numpy())


@pytest.mark.parametrize("name", ["dpsh", "hashnet", "dsh"])
def test_it_learns(name):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    x, y = clusters(30, gen)
    xq, yq = clusters(10, gen)
    method = create_method(name, {"lr": 3e-2}, nn.Identity(), 16, 3, 8, y, "cpu")
    before = retrieval_map(method, xq, yq, x, y)
    for _ in range(15):
        order = torch.randperm(len(y), generator=gen)
        for batch in order.split(30):
            method.training_step(x[batch], y[batch], batch, record=False)
    after = retrieval_map(method, xq, yq, x, y)
    assert after > 0.85 and after > before + 0.3, (before, after)  # chance is ~1/3
