"""ADSH, CSQ and GreedyHash: losses against loops, ADSH's update against brute force, CSQ's
centres, GreedyHash's straight-through gradient, a small "it learns" run each, checkpoints."""
import itertools

import numpy as np
import pytest
import torch
from torch import nn

from schn.errors import SchnError
from schn.methods import create_method
from schn.methods.adsh import (
    ADSHConfig,
    adsh_loss,
    adsh_objective,
    adsh_similarity,
    adsh_update,
    balance_ratio,
    similarity_t_times,
)
from schn.methods.csq import CSQConfig, csq_loss, hadamard, hash_centers, item_centers
from schn.methods.greedyhash import GreedyHashConfig, greedyhash_loss, sign_straight_through
from schn.metrics import mean_average_precision

D = 16


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors: extra threads only add contention on shared cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_labels(gen, n, k, multi=False):
    if multi:
        return (torch.rand(n, k, generator=gen) < 0.4).float()
    return torch.eye(k)[torch.randint(0, k, (n,), generator=gen)]


def loop_similarity01(a, b):
    return [[1.0 if float(a[i] @ b[j]) > 0 else 0.0 for j in range(len(b))] for i in range(len(a))]


def all_columns(rows):
    return torch.tensor(list(itertools.product([-1.0, 1.0], repeat=rows)), dtype=torch.float64)


def clusters(seed, n_per_class=20, k=3):
    """Three well separated Gaussian clusters in 16-d, shuffled; (x, one-hot labels). The
    classes differ in 2 dimensions only, the other 14 carry large noise, so a random head is
    near chance and a good one must learn which dimensions matter."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.zeros(k, D)
    means[:, :2] = 3 * torch.stack([torch.cos(2 * torch.pi * torch.arange(k) / k),
                                    torch.sin(2 * torch.pi * torch.arange(k) / k)], 1)
    y = torch.arange(k).repeat_interleave(n_per_class)
    scale = torch.full((D,), 3.0)
    scale[:2] = 0.4
    x = means[y] + scale * torch.randn(len(y), D, generator=gen)
    perm = torch.randperm(len(y), generator=gen)
    return x[perm], torch.eye(k)[y[perm]]


def run_outer_loop(method, x, y, iterations, epochs=2, batch=16):
    """The engine's loop in miniature: Omega = the whole pool each outer iteration."""
    n = len(x)
    for it in range(iterations):
        method.begin_iteration(it, np.arange(n))
        for epoch in range(epochs):
            perm = torch.randperm(n)
            for s in range(0, n, batch):
                pos = perm[s:s + batch]
                method.training_step(x[pos], y[pos], pos, record=epoch == epochs - 1)
        method.end_iteration()


def signed(t):
    return torch.where(t >= 0, 1.0, -1.0).numpy()


def symmetric_map(method, xq, yq, xd, yd):
    return mean_average_precision(signed(method.encode(xq)), signed(method.encode(xd)), yq.numpy(), yd.numpy())


# ============================== ADSH ==============================
@pytest.mark.parametrize("multi", [False, True])
def test_adsh_similarity_signed_and_balanced_match_loops(multi):
    gen = torch.Generator().manual_seed(3)
    a, b = random_labels(gen, 5, 4, multi), random_labels(gen, 7, 4, multi)
    S01 = loop_similarity01(a, b)
    signed_loop = torch.tensor([[2 * s - 1 for s in row] for row in S01])
    assert torch.equal(adsh_similarity(a, b), signed_loop)
    P = sum(map(sum, S01))
    N = 5 * 7 - P
    assert balance_ratio(a, b) == pytest.approx(P / N)
    r = P / N
    balanced_loop = torch.tensor([[1.0 if s else -r for s in row] for row in S01])
    assert torch.allclose(adsh_similarity(a, b, r), balanced_loop)


def test_balance_ratio_without_dissimilar_pairs_is_zero():
    y = torch.ones(3, 2)
    assert balance_ratio(y, y) == 0.0


def test_similarity_t_times_is_s_transpose_u_across_blocks(monkeypatch):
    import schn.methods.adsh as adsh_module

    monkeypatch.setattr(adsh_module, "_CHUNK", 3)  # several blocks on a tiny problem
    gen = torch.Generator().manual_seed(0)
    lo, la = random_labels(gen, 4, 3, True), random_labels(gen, 10, 3, True)
    U = torch.rand(4, 5, generator=gen) * 2 - 1
    for r in (None, 0.7):
        expected = adsh_similarity(lo, la, r).T @ U
        assert torch.allclose(similarity_t_times(lo, la, U, r), expected, atol=1e-6)


def test_adsh_loss_matches_loops():
    gen = torch.Generator().manual_seed(1)
    b, n, c, gamma = 3, 6, 4, 200.0
    U = torch.rand(b, c, generator=gen) * 2 - 1
    V = torch.randint(0, 2, (n, c), generator=gen).float() * 2 - 1
    S = torch.randint(0, 2, (b, n), generator=gen).float() * 2 - 1
    positions = [4, 0, 2]
    total = 0.0
    for i in range(b):
        for j in range(n):
            total += (sum(U[i, k] * V[j, k] for k in range(c)) - c * S[i, j]) ** 2
        total += gamma * sum((V[positions[i], k] - U[i, k]) ** 2 for k in range(c))
    expected = total / (b * n)
    assert torch.allclose(adsh_loss(U, V, S, V[positions], gamma), torch.as_tensor(expected), rtol=1e-5)


N_DB, M_OMEGA, C_BITS, GAMMA = 5, 3, 3, 2.0  # small gamma so both terms matter


def adsh_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = random_labels(gen, N_DB, 3, multi=seed % 2 == 1)
    omega = torch.randperm(N_DB, generator=gen)[:M_OMEGA]
    U = torch.rand(M_OMEGA, C_BITS, generator=gen, dtype=torch.float64) * 2 - 1
    S = adsh_similarity(labels[omega], labels).double()
    V0 = torch.randint(0, 2, (N_DB, C_BITS), generator=gen).double() * 2 - 1
    return V0, U, omega, S


def loop_objective(V, U, omega, S):
    total = 0.0
    for i, j in itertools.product(range(M_OMEGA), range(N_DB)):
        total += (sum(U[i, k] * V[j, k] for k in range(C_BITS)) - C_BITS * S[i, j]) ** 2
    for i, k in itertools.product(range(M_OMEGA), range(C_BITS)):
        total += GAMMA * (V[omega[i], k] - U[i, k]) ** 2
    return float(total)


def test_adsh_objective_matches_loops():
    V, U, omega, S = adsh_problem(0)
    assert float(adsh_objective(V, U, omega, S, GAMMA)) == pytest.approx(loop_objective(V, U, omega, S))


@pytest.mark.parametrize("seed", range(4))
def test_adsh_update_columns_are_brute_force_minimisers_of_the_objective(seed):
    V0, U, omega, S = adsh_problem(seed)
    V1 = adsh_update(V0, U, omega, S.T @ U, GAMMA)
    assert torch.equal(V0, adsh_problem(seed)[0])  # input untouched
    columns = all_columns(N_DB)
    for k in range(C_BITS):
        # Column k was solved with columns < k already new and columns > k still old.
        seen = torch.cat([V1[:, :k], V0[:, k:]], dim=1)
        values = []
        for col in columns:
            candidate = seen.clone()
            candidate[:, k] = col
            values.append(float(adsh_objective(candidate, U, omega, S, GAMMA)))
        best = columns[int(np.argmin(values))]
        assert torch.equal(best, V1[:, k]), f"column {k} is not the brute-force minimiser"


@pytest.mark.parametrize("seed", range(4))
def test_adsh_update_never_increases_the_objective(seed):
    V, U, omega, S = adsh_problem(seed)
    f = float(adsh_objective(V, U, omega, S, GAMMA))
    for _ in range(10):
        V = adsh_update(V, U, omega, S.T @ U, GAMMA)
        assert set(V.unique().tolist()) <= {-1.0, 1.0}
        f_new = float(adsh_objective(V, U, omega, S, GAMMA))
        assert f_new <= f + 1e-9
        f = f_new


def test_adsh_end_iteration_updates_whole_database_with_recorded_outputs():
    torch.manual_seed(0)
    x, y = clusters(0, n_per_class=4)
    method = create_method("adsh", None, nn.Identity(), D, 3, 8, y, "cpu")
    omega = np.array([0, 2, 3, 5, 7, 9])
    method.begin_iteration(0, omega)
    pos = torch.as_tensor(omega)
    method.training_step(x[pos], y[pos], pos, record=True)
    U = method._rec[pos].clone()
    V_before = method.database_codes()
    r = balance_ratio(y[pos], y)  # the default, balanced similarity over Omega x D
    expected = adsh_update(V_before, U, pos, adsh_similarity(y[pos], y, r).T @ U, 200.0)
    stats = method.end_iteration()
    assert torch.equal(method.database_codes(), expected)
    assert stats["codes_updated"] == len(y)
    # rows outside Omega changed too: the update covers the whole database
    outside = torch.ones(len(y), dtype=torch.bool)
    outside[pos] = False
    assert not torch.equal(method.database_codes()[outside], V_before[outside])


def test_adsh_learns_asymmetric_retrieval():
    torch.manual_seed(0)
    x, y = clusters(1)
    xq, yq = clusters(11, n_per_class=10)
    method = create_method("adsh", {"lr": 1e-2}, nn.Identity(), D, 3, 12, y, "cpu")

    def asymmetric_map():
        q = signed(method.encode(xq))
        return mean_average_precision(q, method.database_codes().numpy(), yq.numpy(), y.numpy())

    before = asymmetric_map()
    run_outer_loop(method, x, y, iterations=8)
    after = asymmetric_map()
    assert after > 0.9 and after > before + 0.3, (before, after)


def test_adsh_options_and_checkpoint_round_trip():
    torch.manual_seed(0)
    x, y = clusters(2, n_per_class=5)
    zeros = create_method("adsh", {"init_codes": "zeros"}, nn.Identity(), D, 3, 8, y, "cpu")
    assert torch.equal(zeros.database_codes(), torch.zeros(len(y), 8))
    balanced = create_method("adsh", {"similarity": "balanced", "lr": 1e-2}, nn.Identity(), D, 3, 8, y, "cpu")
    run_outer_loop(balanced, x, y, iterations=1)
    again = create_method("adsh", {"similarity": "balanced"}, nn.Identity(), D, 3, 8, y, "cpu")
    assert not torch.equal(again.database_codes(), balanced.database_codes())
    again.load_state_dict(balanced.state_dict())
    assert torch.equal(again.database_codes(), balanced.database_codes())
    assert torch.equal(again.encode(x), balanced.encode(x))
    for bad in ({"gamma": -1.0}, {"init_codes": "ones"}, {"similarity": "soft"}):
        with pytest.raises(SchnError):
            ADSHConfig(**bad)


# ============================== CSQ ==============================
def hamming(a, b):
    return int((a != b).sum())


@pytest.mark.parametrize("bits", [8, 16, 32])
def test_hadamard_centres_are_half_the_code_apart(bits):
    H = hadamard(bits)
    assert torch.equal(H @ H.T, bits * torch.eye(bits))
    centres = hash_centers(bits, bits, torch.Generator().manual_seed(0))  # K = c classes
    for i, j in itertools.combinations(range(bits), 2):
        assert hamming(centres[i], centres[j]) == bits // 2
    # K in (c, 2c]: negated rows join; a row and its negation are c apart, all others c/2.
    centres = hash_centers(2 * bits, bits, torch.Generator().manual_seed(0))
    for i, j in itertools.combinations(range(2 * bits), 2):
        assert hamming(centres[i], centres[j]) == (bits if abs(i - j) == bits else bits // 2)


def test_random_centres_outside_the_hadamard_case():
    for classes, bits in ((10, 12), (40, 16)):  # 12 not a power of 2; 40 > 2 * 16
        centres = hash_centers(classes, bits, torch.Generator().manual_seed(0))
        assert centres.shape == (classes, bits) and set(centres.unique().tolist()) == {-1.0, 1.0}
        assert torch.equal(centres, hash_centers(classes, bits, torch.Generator().manual_seed(0)))
        if bits == 16:
            assert not torch.equal(centres[:bits], hadamard(bits))


def test_item_centres_multi_label_rule_matches_loop():
    gen = torch.Generator().manual_seed(0)
    centres = hash_centers(4, 8, gen)
    tie = torch.randint(0, 2, (8,), generator=gen).float() * 2 - 1
    labels = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 0, 0], [0, 1, 1, 1]]).float()
    got = item_centers(labels, centres, tie)
    for i, row in enumerate(labels):
        members = [centres[k] for k in range(4) if row[k] == 1]
        for bit in range(8):
            mean = sum(float(m[bit]) for m in members) / len(members) if members else 0.0
            want = float(tie[bit]) if mean == 0 else (1.0 if mean > 0 else -1.0)
            assert float(got[i, bit]) == want
    assert torch.equal(got[0], centres[0])  # one label: its class centre
    assert torch.equal(got[3], tie)  # no label: the tie-break vector


def test_csq_loss_matches_loops():
    gen = torch.Generator().manual_seed(2)
    b, c, lam = 4, 6, 0.3
    U = (torch.rand(b, c, generator=gen) * 2 - 1) * 0.99
    T = torch.randint(0, 2, (b, c), generator=gen).float() * 2 - 1
    import math

    bce = quant = 0.0
    for i, k in itertools.product(range(b), range(c)):
        p, t = (float(U[i, k]) + 1) / 2, (float(T[i, k]) + 1) / 2
        bce -= t * math.log(p) + (1 - t) * math.log(1 - p)
        quant += (abs(float(U[i, k])) - 1) ** 2
    terms = csq_loss(U, T, lam)
    assert float(terms["loss_central"]) == pytest.approx(bce / (b * c), rel=1e-5)
    assert float(terms["loss_quant"]) == pytest.approx(quant / (b * c), rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(bce / (b * c) + lam * quant / (b * c), rel=1e-5)


def test_csq_learns():
    torch.manual_seed(0)
    x, y = clusters(3)
    xq, yq = clusters(13, n_per_class=10)
    method = create_method("csq", {"lr": 1e-2}, nn.Identity(), D, 3, 16, y, "cpu")
    before = symmetric_map(method, xq, yq, x, y)
    run_outer_loop(method, x, y, iterations=10)
    after = symmetric_map(method, xq, yq, x, y)
    assert after > 0.9 and after > before + 0.1, (before, after)


def test_csq_centres_are_restored_by_a_checkpoint():
    y = torch.eye(5)[torch.arange(20) % 5]
    torch.manual_seed(0)
    method = create_method("csq", None, nn.Identity(), D, 5, 12, y, "cpu")  # 12 bits: random centres
    torch.manual_seed(1)
    other = create_method("csq", None, nn.Identity(), D, 5, 12, y, "cpu")
    assert not torch.equal(method.centers, other.centers)
    other.load_state_dict(method.state_dict())
    assert torch.equal(method.centers, other.centers) and torch.equal(method.tie_break, other.tie_break)
    with pytest.raises(SchnError):
        CSQConfig(lambda_q=-1.0)


# ============================== GreedyHash ==============================
def test_sign_straight_through_forward_and_gradient():
    z = torch.tensor([[-2.0, -0.1, 0.0, 0.3, 5.0]], requires_grad=True)
    b = sign_straight_through(z)
    assert torch.equal(b, torch.tensor([[-1.0, -1.0, 1.0, 1.0, 1.0]]))
    upstream = torch.tensor([[0.5, -1.0, 2.0, 3.0, -4.0]])
    (b * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)  # d sign / dz taken as the identity


def test_greedyhash_loss_gradient_is_straight_through_plus_penalty():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, generator=gen, requires_grad=True)
    W = torch.randn(3, 6, generator=gen)
    labels = torch.eye(3)[torch.tensor([0, 2, 1, 2])]
    alpha = 0.1
    greedyhash_loss(sign_straight_through(z) @ W.T, labels, z, alpha, False)["loss"].backward()
    # By hand: gradient of CE at the binary codes b, plus the penalty's own gradient at z.
    b = torch.where(z.detach() >= 0, 1.0, -1.0).requires_grad_(True)
    torch.nn.functional.cross_entropy(b @ W.T, labels.argmax(1)).backward()
    zd = z.detach()
    penalty_grad = 3 * (zd.abs() - 1).abs() ** 2 * torch.sign(zd.abs() - 1) * torch.sign(zd) / zd.numel()
    assert torch.allclose(z.grad, b.grad + alpha * penalty_grad, atol=1e-6)


@pytest.mark.parametrize("multi", [False, True])
def test_greedyhash_loss_matches_loops(multi):
    import math

    gen = torch.Generator().manual_seed(4)
    n, k, c, alpha = 4, 3, 5, 0.1
    Z = torch.randn(n, c, generator=gen)
    logits = torch.randn(n, k, generator=gen)
    labels = random_labels(gen, n, k, multi)
    task = 0.0
    for i in range(n):
        if multi:
            for j in range(k):
                p = 1 / (1 + math.exp(-float(logits[i, j])))
                t = float(labels[i, j])
                task -= (t * math.log(p) + (1 - t) * math.log(1 - p)) / (n * k)
        else:
            true = int(labels[i].argmax())
            lse = math.log(sum(math.exp(float(v)) for v in logits[i]))
            task += (lse - float(logits[i, true])) / n
    penalty = sum(abs(abs(float(v)) - 1) ** 3 for v in Z.flatten()) / (n * c)
    terms = greedyhash_loss(logits, labels, Z, alpha, multi)
    assert float(terms["loss_class"]) == pytest.approx(task, rel=1e-5)
    assert float(terms["loss_penalty"]) == pytest.approx(penalty, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(task + alpha * penalty, rel=1e-5)


def test_greedyhash_learns_and_trains_its_classifier():
    torch.manual_seed(0)
    x, y = clusters(5)
    xq, yq = clusters(15, n_per_class=10)
    method = create_method("greedyhash", {"lr": 1e-2}, nn.Identity(), D, 3, 12, y, "cpu")
    assert not method.multi_label
    W0 = method.classifier.weight.detach().clone()
    before = symmetric_map(method, xq, yq, x, y)
    run_outer_loop(method, x, y, iterations=10)
    after = symmetric_map(method, xq, yq, x, y)
    assert after > 0.9 and after > before + 0.1, (before, after)
    assert not torch.equal(method.classifier.weight, W0)
    again = create_method("greedyhash", None, nn.Identity(), D, 3, 12, y, "cpu")
    again.load_state_dict(method.state_dict())
    assert torch.equal(again.classifier.weight, method.classifier.weight)
    assert torch.equal(again.encode(x), method.encode(x))


def test_greedyhash_multi_label_uses_sigmoid_loss():
    torch.manual_seed(0)
    y = torch.tensor([[1, 0, 0], [1, 1, 0], [0, 0, 1], [0, 1, 0]]).float()
    method = create_method("greedyhash", {"lr": 1e-2}, nn.Identity(), D, 3, 8, y, "cpu")
    assert method.multi_label
    terms = method.training_step(torch.randn(4, D), y, torch.arange(4), record=False)
    assert np.isfinite(terms["loss"])
    with pytest.raises(SchnError):
        GreedyHashConfig(alpha=-0.1)
