"""LSH, ITQ and SDH: each piece against its formula written out directly, the engine hooks of the
shared shallow base, save/load, and that each method learns on tiny synthetic clusters."""
import itertools
import math

import numpy as np
import pytest
import torch
from torch import nn

from schn.codes import to_signed
from schn.errors import SchnError
from schn.methods import ITQConfig, LSHConfig, SDHConfig, create_method
from schn.methods.itq import (itq_rotation, pca_directions, procrustes_rotation, quantization_loss,
                              random_rotation)
from schn.methods.common import sweep_column
from schn.methods.sdh import dcc_b_step, f_step, g_step, rbf_features, sdh_alternate, sdh_objective
from schn.metrics import mean_average_precision

NAMES = ["lsh", "itq", "sdh"]
D, K = 16, 3


def clusters(n, gen, sep=6.0, noise_std=1.0):
    """3 Gaussian clusters whose centres differ in dims 0-1; dims 2.. are noise of std noise_std."""
    y = torch.arange(n) % K
    centres = torch.zeros(K, D)
    centres[:, :2] = torch.tensor([[0.0, 0.0], [sep, 0.0], [sep / 2, sep * math.sqrt(3) / 2]])
    scale = torch.ones(D)
    scale[2:] = noise_std
    return centres[y] + torch.randn(n, D, generator=gen) * scale, torch.eye(K)[y]


def build(name, labels, bits=8, config=None, seed=0, backbone=None):
    torch.manual_seed(seed)
    return create_method(name, config, backbone or nn.Identity(), D, K, bits, labels, "cpu")


def fit(method, x, labels, batch=64, order=None):
    """Drive the engine hooks: one outer iteration, one (recorded) epoch."""
    order = torch.arange(len(x)) if order is None else order
    method.train()
    method.begin_iteration(0, np.arange(len(x)))
    for start in range(0, len(x), batch):
        pos = order[start:start + batch]
        terms = method.training_step(x[pos], labels[pos], pos, record=True)
        assert terms and all(np.isfinite(v) for v in terms.values())
    return method.end_iteration()


def retrieval_map(method, xq, yq, xd, yd):
    method.eval()
    q, d = to_signed(method.encode(xq)).numpy(), to_signed(method.encode(xd)).numpy()
    return mean_average_precision(q, d, yq.numpy(), yd.numpy())


def orthogonality_error(R):
    return float((R.T @ R - torch.eye(R.shape[1], dtype=R.dtype)).abs().max())


# ---------------------------------------------------------------- shared base (engine hooks)
@pytest.mark.parametrize("name", NAMES)
def test_trainable_backbone_is_refused_in_one_line(name):
    labels = torch.eye(K)[torch.arange(12) % K]
    with pytest.raises(SchnError) as err:
        build(name, labels, backbone=nn.Linear(D, D))
    message = str(err.value)
    assert "\n" not in message and "model.frozen=true" in message and "model.backbone=pixels" in message
    frozen = nn.Linear(D, D).requires_grad_(False)
    build(name, labels, backbone=frozen)  # a frozen backbone is fine


@pytest.mark.parametrize("name", NAMES)
def test_encode_before_fit_is_a_clear_error(name):
    method = build(name, torch.eye(K)[torch.arange(12) % K])
    with pytest.raises(SchnError, match="not been fitted"):
        method.encode(torch.randn(4, D))


@pytest.mark.parametrize("name", NAMES)
def test_steps_outside_the_last_epoch_record_nothing(name):
    gen = torch.Generator().manual_seed(0)
    x, y = clusters(30, gen)
    method = build(name, y)
    method.begin_iteration(0, np.arange(30))
    terms = method.training_step(x[:10], y[:10], torch.arange(10), record=False)
    assert terms == {"recorded_items": 0.0}
    assert method.end_iteration() == {}  # nothing recorded: no fit, state unchanged
    assert not bool(method.fitted)
    stats = fit(method, x, y)
    assert stats["fitted_items"] == 30 and all(np.isfinite(v) for v in stats.values())
    assert bool(method.fitted)


@pytest.mark.parametrize("name", NAMES)
def test_fit_is_ordered_by_position_whatever_the_batch_order(name):
    gen = torch.Generator().manual_seed(1)
    x, y = clusters(40, gen)
    ordered = build(name, y, seed=5)
    fit(ordered, x, y, batch=7)
    shuffled = build(name, y, seed=5)
    fit(shuffled, x, y, batch=7, order=torch.randperm(40, generator=gen))
    for key, value in ordered.state_dict().items():
        assert torch.allclose(value.float(), shuffled.state_dict()[key].float(), atol=1e-5), key


def test_a_position_recorded_twice_keeps_its_last_features():
    x = torch.randn(4, D)
    method = build("lsh", torch.eye(K)[torch.arange(4) % K])
    method.begin_iteration(0, np.arange(4))
    method.training_step(x[:2] + 100, torch.eye(K)[:2], torch.arange(2), record=True)
    method.training_step(x, torch.eye(K)[torch.arange(4) % K], torch.arange(4), record=True)
    assert method.end_iteration()["fitted_items"] == 4
    assert torch.allclose(method.mean, x.mean(0), atol=1e-6)


def test_wrong_feature_width_is_a_clear_error():
    method = build("lsh", torch.eye(K)[torch.arange(4) % K])
    with pytest.raises(SchnError, match="8-d features"):
        method.training_step(torch.randn(4, 8), torch.eye(K)[torch.arange(4) % K], torch.arange(4), True)


@pytest.mark.parametrize("name,config", [("lsh", None), ("itq", None), ("sdh", {"num_anchors": 50})])
def test_save_then_load_into_a_fresh_instance_gives_identical_codes(name, config):
    gen = torch.Generator().manual_seed(2)
    x, y = clusters(30, gen)  # fewer items than SDH anchors: the anchor count is capped
    method = build(name, y, config=config, seed=0)
    fit(method, x, y)
    again = build(name, y, config=config, seed=123)  # other random draws, overwritten by the load
    again.load_state_dict(method.state_dict())
    queries = torch.randn(10, D, generator=gen)
    assert torch.equal(again.encode(queries), method.encode(queries))
    if name == "sdh":
        assert int(method.anchors_used) == 30 and method.anchors.shape == (50, D)
        assert (method.anchors[30:] == 0).all()


@pytest.mark.parametrize("config_class,values", [
    (LSHConfig, {"centre": "yes"}), (ITQConfig, {"iterations": -1}), (ITQConfig, {"iterations": 2.5}),
    (SDHConfig, {"num_anchors": 0}), (SDHConfig, {"lam": -1.0}), (SDHConfig, {"nu": -1e-5}),
    (SDHConfig, {"dcc_passes": 0}), (SDHConfig, {"sigma": 0.0}), (SDHConfig, {"f_ridge": -1.0}),
])
def test_bad_options_are_refused(config_class, values):
    with pytest.raises(SchnError, match="method option"):
        config_class(**values)


# ---------------------------------------------------------------- LSH
def test_lsh_projection_is_drawn_once_from_the_global_seed():
    labels = torch.eye(K)[torch.arange(9) % K]
    a, b, c = build("lsh", labels, seed=7), build("lsh", labels, seed=7), build("lsh", labels, seed=8)
    assert torch.equal(a.projection, b.projection) and not torch.equal(a.projection, c.projection)
    before = a.projection.clone()
    fit(a, torch.randn(9, D), labels)
    assert torch.equal(a.projection, before)  # fitting only learns the mean


@pytest.mark.parametrize("centre", [True, False])
def test_lsh_codes_are_signs_of_centred_random_projections(centre):
    gen = torch.Generator().manual_seed(3)
    x, y = torch.rand(6, D, generator=gen) * 5, torch.eye(K)[torch.arange(6) % K]
    method = build("lsh", y, bits=5, config={"centre": centre})
    fit(method, x, y)
    mean = [sum(float(x[i, j]) for i in range(6)) / 6 if centre else 0.0 for j in range(D)]
    W = method.projection
    expected = torch.tensor([[sum((float(x[i, j]) - mean[j]) * float(W[j, k]) for j in range(D))
                              for k in range(5)] for i in range(6)])
    assert torch.allclose(method.encode(x), expected, atol=1e-4)
    if centre:  # centred codes are balanced on average; raw ones on non-negative data need not be
        assert float(method.encode(x).sum(0).abs().max()) < 1e-3


# ---------------------------------------------------------------- ITQ
@pytest.mark.parametrize("n,d,k", [(40, 6, 4), (5, 12, 3), (5, 12, 6)])
def test_pca_directions_span_the_top_principal_subspace(n, d, k):
    gen = torch.Generator().manual_seed(n + d + k)
    X = torch.randn(n, d, generator=gen, dtype=torch.float64) * torch.linspace(3, 0.5, d, dtype=torch.float64)
    Xc = X - X.mean(0)
    W = pca_directions(Xc, k)
    assert W.shape == (d, k) and orthogonality_error(W) < 1e-10
    _, s, vt = np.linalg.svd(Xc.numpy(), full_matrices=True)
    rank_k = min(k, n - 1)  # centred data has rank n - 1 at most; further directions are arbitrary
    top = torch.from_numpy(vt[:rank_k].T)
    # the same subspace (projectors agree) and variances in decreasing order
    assert torch.allclose(W[:, :rank_k] @ W[:, :rank_k].T, top @ top.T, atol=1e-8)
    variances = ((Xc @ W) ** 2).sum(0)
    assert (variances[:-1] >= variances[1:] - 1e-9).all()


def test_random_rotation_is_orthogonal_and_seeded():
    R = random_rotation(5, torch.Generator().manual_seed(0))
    assert orthogonality_error(R) < 1e-12
    assert torch.equal(R, random_rotation(5, torch.Generator().manual_seed(0)))


def test_quantization_loss_matches_loops():
    gen = torch.Generator().manual_seed(0)
    V, R = torch.randn(5, 3, generator=gen), random_rotation(3, gen).float()
    B = to_signed(torch.randn(5, 3, generator=gen))
    expected = sum((float(B[i, k]) - sum(float(V[i, j]) * float(R[j, k]) for j in range(3))) ** 2
                   for i in range(5) for k in range(3))
    assert math.isclose(float(quantization_loss(B, V, R)), expected, rel_tol=1e-5)


def test_procrustes_rotation_is_the_polar_factor_and_the_best_rotation():
    gen = torch.Generator().manual_seed(1)
    V = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    B = to_signed(torch.randn(20, 4, generator=gen, dtype=torch.float64))
    R = procrustes_rotation(V, B)
    # direct formula: the orthogonal polar factor of M = V^T B, R = M (M^T M)^{-1/2}
    M = V.T @ B
    evals, evecs = torch.linalg.eigh(M.T @ M)
    assert torch.allclose(R, M @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T, atol=1e-10)
    assert orthogonality_error(R) < 1e-12
    best = float(quantization_loss(B, V, R))
    for _ in range(50):
        assert best <= float(quantization_loss(B, V, random_rotation(4, gen))) + 1e-9


def test_itq_rotation_stays_orthogonal_and_never_increases_the_loss():
    gen = torch.Generator().manual_seed(2)
    V = torch.randn(60, 6, generator=gen, dtype=torch.float64) * torch.linspace(2, 0.3, 6, dtype=torch.float64)
    R, losses = itq_rotation(V, random_rotation(6, gen), 50)
    assert orthogonality_error(R) < 1e-10 and len(losses) == 51
    assert all(b <= a + 1e-9 for a, b in zip(losses, losses[1:]))
    assert losses[-1] < losses[0]
    assert float(quantization_loss(to_signed(V @ R), V, R)) <= losses[-1] + 1e-9  # a next B-step only helps


def test_itq_fit_stores_pca_and_rotation_of_the_centred_data():
    gen = torch.Generator().manual_seed(4)
    x, y = clusters(50, gen)
    method = build("itq", y, bits=4, config={"iterations": 10})
    stats = fit(method, x, y)
    assert stats["quantization_loss"] <= stats["quantization_loss_start"]
    assert orthogonality_error(method.rotation) < 1e-5 and orthogonality_error(method.pca) < 1e-5
    assert torch.allclose(method.mean, x.mean(0), atol=1e-5)
    expected = (x - x.mean(0)) @ method.pca @ method.rotation
    assert torch.allclose(method.encode(x), expected, atol=1e-4)


def test_itq_refuses_more_bits_than_feature_dimensions():
    with pytest.raises(SchnError, match="at most 16 directions"):
        build("itq", torch.eye(K)[torch.arange(30) % K], bits=17)
    build("itq", torch.eye(K)[torch.arange(30) % K], bits=16)


# ---------------------------------------------------------------- SDH
def tiny_sdh_problem(seed, n=7, c=3, k=3, m=4, multi=False):
    gen = torch.Generator().manual_seed(seed)
    f64 = dict(dtype=torch.float64)
    Y = (torch.rand(n, k, generator=gen, **f64) < 0.4).double() if multi else torch.eye(k, **f64)[torch.arange(n) % k]
    phi = torch.rand(n, m, generator=gen, **f64)
    B = to_signed(torch.randn(n, c, generator=gen, **f64))
    return gen, Y, phi - phi.mean(0), B


def test_rbf_features_match_loops():
    gen = torch.Generator().manual_seed(0)
    X, A, sigma = torch.randn(4, 3, generator=gen), torch.randn(2, 3, generator=gen), 1.7
    expected = torch.tensor([[math.exp(-sum((float(X[i, j]) - float(A[a, j])) ** 2 for j in range(3)) / (2 * sigma**2))
                              for a in range(2)] for i in range(4)])
    assert torch.allclose(rbf_features(X, A, sigma), expected, atol=1e-6)


def test_sdh_objective_matches_loops():
    gen, Y, phi, B = tiny_sdh_problem(0)
    W, P = torch.randn(3, 3, generator=gen, dtype=torch.float64), torch.randn(4, 3, generator=gen, dtype=torch.float64)
    bias = torch.randn(3, generator=gen, dtype=torch.float64)
    lam, nu, ridge = 0.7, 0.3, 0.2
    n, c, k, m = 7, 3, 3, 4
    label_term = sum((Y[i, t] - sum(B[i, l] * W[l, t] for l in range(c))) ** 2 for i in range(n) for t in range(k))
    F = [[sum(phi[i, j] * P[j, l] for j in range(m)) + bias[l] for l in range(c)] for i in range(n)]
    fit_term = sum((B[i, l] - F[i][l]) ** 2 for i in range(n) for l in range(c))
    expected = label_term + lam * (W**2).sum() + nu * (fit_term + ridge * (P**2).sum())
    assert math.isclose(float(sdh_objective(B, W, P, bias, phi, Y, lam, nu, ridge)), float(expected), rel_tol=1e-10)


def test_f_and_g_steps_solve_their_normal_equations():
    gen, Y, phi, B = tiny_sdh_problem(1)
    W = g_step(B, Y, 0.5)
    assert torch.allclose(torch.linalg.solve(B.T @ B + 0.5 * torch.eye(3, dtype=B.dtype), B.T @ Y), W)
    assert torch.allclose(B.T @ (B @ W - Y) + 0.5 * W, torch.zeros_like(W), atol=1e-10)  # gradient 0
    P, bias = f_step(phi, B, 0.1)
    residual = phi @ P + bias - B
    assert torch.allclose(phi.T @ residual + 0.1 * P, torch.zeros_like(P), atol=1e-10)
    assert torch.allclose(residual.sum(0), torch.zeros(3, dtype=B.dtype), atol=1e-10)  # unpenalised bias


@pytest.mark.parametrize("seed", range(3))
def test_dcc_bit_rule_is_the_brute_force_minimiser_of_each_bit(seed):
    gen, Y, phi, B = tiny_sdh_problem(seed, c=4)
    W = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    P, bias = f_step(phi, B, 0.01)
    lam, nu = 1.0, 0.5  # a large nu so the fitting term matters in the check
    Q = Y @ W.T + nu * (phi @ P + bias)
    for bit in range(4):
        new = sweep_column(B, W.T, Q, bit)  # the DCC rule: U = W^T
        for i in range(len(B)):
            values = {}
            for v in (-1.0, 1.0):
                trial = B.clone()
                trial[i, bit] = v
                values[v] = float(sdh_objective(trial, W, P, bias, phi, Y, lam, nu))
            if abs(values[1.0] - values[-1.0]) > 1e-9:
                assert float(new[i]) == min(values, key=values.get)


@pytest.mark.parametrize("seed", range(3))
def test_dcc_b_step_never_increases_the_objective_and_ends_at_a_bitwise_minimum(seed):
    gen, Y, phi, B = tiny_sdh_problem(seed, c=4, multi=seed == 2)
    W = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    P, bias = f_step(phi, B, 0.01)
    lam, nu = 1.0, 0.5
    Q = Y @ W.T + nu * (phi @ P + bias)
    values = [float(sdh_objective(B, W, P, bias, phi, Y, lam, nu))]
    current = B
    for _ in range(10):  # one sweep at a time, to watch every sweep
        current, _ = dcc_b_step(current, W, Q, 1)
        values.append(float(sdh_objective(current, W, P, bias, phi, Y, lam, nu)))
    assert all(b <= a + 1e-9 for a, b in zip(values, values[1:]))
    final, sweeps = dcc_b_step(B, W, Q, 50)
    assert sweeps < 50  # converged: no single flip lowers the objective
    base = float(sdh_objective(final, W, P, bias, phi, Y, lam, nu))
    for i, bit in itertools.product(range(len(B)), range(4)):
        flipped = final.clone()
        flipped[i, bit] *= -1
        assert float(sdh_objective(flipped, W, P, bias, phi, Y, lam, nu)) >= base - 1e-9


def test_dcc_b_step_finds_the_enumerated_optimum_when_bits_decouple():
    # Orthogonal rows of W make ||B W||^2 separable over bits: DCC must reach the global optimum,
    # found here by enumerating all 2^4 codes of each item.
    gen, Y, phi, B = tiny_sdh_problem(5, c=4, k=4)
    W = torch.linalg.qr(torch.randn(4, 4, generator=gen, dtype=torch.float64))[0] * 0.8
    Q = torch.randn(len(B), 4, generator=gen, dtype=torch.float64)
    final, _ = dcc_b_step(B, W, Q, 10)
    codes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=4)), dtype=torch.float64)
    for i in range(len(B)):
        costs = ((codes @ W) ** 2).sum(1) - 2 * codes @ Q[i]  # per-item B-step objective
        assert torch.equal(final[i], codes[costs.argmin()])


@pytest.mark.parametrize("multi", [False, True])
def test_sdh_alternation_never_increases_its_objective(multi):
    gen, Y, phi, B = tiny_sdh_problem(7, n=30, c=6, k=4, m=10, multi=multi)
    for nu in (1e-5, 0.5):
        P, bias, codes, W, objectives = sdh_alternate(phi, Y, B, 5, 1.0, nu, 0.01, 10)
        assert len(objectives) == 3 * 5 + 1
        assert all(b <= a * (1 + 1e-12) + 1e-12 for a, b in zip(objectives, objectives[1:]))
        assert math.isclose(objectives[-1], float(sdh_objective(codes, W, P, bias, phi, Y, 1.0, nu, 0.01)))


def test_sdh_fit_stores_anchors_sigma_and_a_centred_kernel_map():
    gen = torch.Generator().manual_seed(6)
    x, y = clusters(40, gen)
    method = build("sdh", y, config={"num_anchors": 25})
    stats = fit(method, x, y)
    assert stats["anchors"] == 25 and stats["objective"] <= stats["objective_start"]
    anchors = method.anchors[:25]
    # anchors are distinct training items; sigma is their mean distance to the training items
    matches = (anchors[:, None, :] == x[None]).all(-1)
    assert (matches.sum(1) == 1).all() and len(torch.unique(matches.nonzero()[:, 1])) == 25
    assert math.isclose(float(method.sigma), float(torch.cdist(x.double(), anchors.double()).mean()), rel_tol=1e-5)
    phi = rbf_features(x, anchors, float(method.sigma))
    assert torch.allclose(method.phi_mean[:25], phi.mean(0), atol=1e-6)
    assert torch.allclose(method.encode(x), (phi - phi.mean(0)) @ method.projection[:25] + method.bias, atol=1e-4)


# ---------------------------------------------------------------- it learns
def chance_map(yq, yd, bits=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q = to_signed(torch.randn(len(yq), bits, generator=gen)).numpy()
    d = to_signed(torch.randn(len(yd), bits, generator=gen)).numpy()
    return mean_average_precision(q, d, yq.numpy(), yd.numpy())


def test_itq_and_sdh_learn_well_above_chance_and_lsh():
    gen = torch.Generator().manual_seed(0)
    xd, yd = clusters(240, gen)
    xq, yq = clusters(60, gen)
    chance = chance_map(yq, yd)
    scores = {}
    for name in NAMES:
        method = build(name, yd)
        fit(method, xd, yd)
        scores[name] = retrieval_map(method, xq, yq, xd, yd)
    assert chance < 0.4
    assert scores["lsh"] > chance + 0.1          # random projections already carry the clusters
    assert scores["itq"] > scores["lsh"] + 0.1   # PCA finds the two informative directions
    assert scores["sdh"] > 0.95                  # labels: the clusters are nearly separated


def test_sdh_uses_the_labels_where_the_variance_says_nothing():
    # Labels live in two dims of small variance, the other 14 dims are strong noise: unsupervised
    # codes are near chance, SDH's are not.
    gen = torch.Generator().manual_seed(1)
    xd, yd = clusters(300, gen, sep=4.0, noise_std=4.0)
    xq, yq = clusters(60, gen, sep=4.0, noise_std=4.0)
    chance = chance_map(yq, yd)
    itq, sdh = build("itq", yd), build("sdh", yd)
    fit(itq, xd, yd)
    fit(sdh, xd, yd)
    assert retrieval_map(itq, xq, yq, xd, yd) < chance + 0.1
    assert retrieval_map(sdh, xq, yq, xd, yd) > 0.8


def test_sdh_learns_multi_label_data():
    # Two binary attributes (sign of dim 0, sign of dim 1) as multi-hot labels; about a quarter of
    # the items carry both labels, a quarter none.
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(400, D, generator=gen)
    x[:, :2] += 2.0 * torch.sign(x[:, :2])
    y = (x[:, :2] > 0).float()
    xd, yd, xq, yq = x[:320], y[:320], x[320:], y[320:]
    keep = yq.sum(1) > 0  # queries with no label have no relevant item
    torch.manual_seed(0)
    sdh = create_method("sdh", None, nn.Identity(), D, 2, 8, yd, "cpu")
    fit(sdh, xd, yd)
    lsh = create_method("lsh", None, nn.Identity(), D, 2, 8, yd, "cpu")
    fit(lsh, xd, yd)
    sdh_map = retrieval_map(sdh, xq[keep], yq[keep], xd, yd)
    assert sdh_map > 0.85 and sdh_map > retrieval_map(lsh, xq[keep], yq[keep], xd, yd) + 0.05
