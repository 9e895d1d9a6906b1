"""The discrete update of B against brute force over every code on tiny problems."""
import itertools

import pytest
import torch

from schn.methods.schn_loss import (database_objective, database_update, discrete_objective, discrete_update,
                                   soft_similarity)

M, C = 4, 3  # 2^(4*3) = 4096 candidate B's
GAMMA, ALPHA, BETA = 10.0, 2.0, 0.1


def problem(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.eye(3)[torch.randint(0, 3, (M,), generator=gen)]
    labels[0] = 1 - labels[1]  # at least one dissimilar pair, so S~ is not trivially all ones
    U = torch.rand(M, C, generator=gen, dtype=torch.float64) * 2 - 1
    U_L = torch.rand(M, C, generator=gen, dtype=torch.float64) * 2 - 1
    U_Z = torch.rand(M, C, generator=gen, dtype=torch.float64)
    S = soft_similarity(labels, labels).double()
    B0 = torch.randint(0, 2, (M, C), generator=gen).double() * 2 - 1
    return B0, U, U_L, U_Z, S


def all_codes(rows, cols):
    bits = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=rows * cols)), dtype=torch.float64)
    return bits.view(-1, rows, cols)


def f_batched(Bs, U, U_L, U_Z, S):
    return torch.stack([discrete_objective(B, U, U_L, U_Z, S, GAMMA, ALPHA, BETA) for B in Bs])


def full_objective(B, U, U_L, U_Z, S):
    """The quadratic objective written out with loops; f must equal it up to a constant."""
    m, c = B.shape
    total = 0.0
    for i, j in itertools.product(range(m), range(m)):
        total += (sum(U[i, k] * B[j, k] for k in range(c)) - c * S[i, j]) ** 2
    for i, k in itertools.product(range(m), range(c)):
        total += GAMMA * (B[i, k] - U[i, k]) ** 2 + ALPHA * (B[i, k] - U_L[i, k]) ** 2
        total += BETA * (B[i, k] - U_Z[i, k]) ** 2
    return float(total)


@pytest.mark.parametrize("seed", range(3))
def test_objective_is_the_quadratic_objective_up_to_a_constant(seed):
    _, U, U_L, U_Z, S = problem(seed)
    gen = torch.Generator().manual_seed(seed)
    picks = all_codes(M, C)[torch.randperm(2 ** (M * C), generator=gen)[:6]]
    diffs = [full_objective(B, U, U_L, U_Z, S) - float(discrete_objective(B, U, U_L, U_Z, S, GAMMA, ALPHA, BETA))
             for B in picks]
    assert max(diffs) - min(diffs) < 1e-8 * max(abs(d) for d in diffs) + 1e-9


@pytest.mark.parametrize("seed", range(5))
def test_each_column_update_is_the_exact_column_minimiser(seed):
    B0, U, U_L, U_Z, S = problem(seed)
    B1 = discrete_update(B0, U, U_L, U_Z, S, GAMMA, ALPHA, BETA)
    columns = all_codes(M, 1)[:, :, 0]  # all 2^M values of one column
    for k in range(C):
        # Column k was solved with columns < k already updated and columns > k still old.
        seen = torch.cat([B1[:, :k], B0[:, k:]], dim=1)
        candidates = seen.expand(len(columns), M, C).clone()
        candidates[:, :, k] = columns
        best = candidates[f_batched(candidates, U, U_L, U_Z, S).argmin()]
        assert torch.equal(best[:, k], B1[:, k]), f"column {k} is not the brute-force minimiser"


@pytest.mark.parametrize("seed", range(5))
def test_sweeps_never_increase_the_objective_and_reach_a_column_wise_minimum(seed):
    B, U, U_L, U_Z, S = problem(seed)
    everything = f_batched(all_codes(M, C), U, U_L, U_Z, S)
    f = float(discrete_objective(B, U, U_L, U_Z, S, GAMMA, ALPHA, BETA))
    for _ in range(20):
        B = discrete_update(B, U, U_L, U_Z, S, GAMMA, ALPHA, BETA)
        f_new = float(discrete_objective(B, U, U_L, U_Z, S, GAMMA, ALPHA, BETA))
        assert f_new <= f + 1e-9
        assert f_new >= float(everything.min()) - 1e-9
        f = f_new
    # At the fixed point no single column can be improved (brute force over 2^M values).
    assert torch.equal(discrete_update(B, U, U_L, U_Z, S, GAMMA, ALPHA, BETA), B)
    columns = all_codes(M, 1)[:, :, 0]
    for k in range(C):
        candidates = B.expand(len(columns), M, C).clone()
        candidates[:, :, k] = columns
        assert float(f_batched(candidates, U, U_L, U_Z, S).min()) >= f - 1e-9


def test_sign_zero_choice():
    # U = 0 and U_L = U_Z = 0 make every argument exactly 0.
    zeros = torch.zeros(M, C)
    S = torch.ones(M, M)
    B = -torch.ones(M, C)
    assert torch.equal(discrete_update(B, zeros, zeros, zeros, S, GAMMA, ALPHA, BETA), torch.ones(M, C))
    assert torch.equal(
        discrete_update(B, zeros, zeros, zeros, S, GAMMA, ALPHA, BETA, sign_zero="zero"), zeros
    )


def test_update_does_not_modify_its_input():
    B, U, U_L, U_Z, S = problem(0)
    before = B.clone()
    discrete_update(B, U, U_L, U_Z, S, GAMMA, ALPHA, BETA)
    assert torch.equal(B, before)


# ----- update_scope="database": every database code, as ADSH -----
ROWS, OMEGA = 5, torch.tensor([0, 2, 3])  # 2^(5*3) = 32768 candidate B's over the whole database


def database_problem(seed):
    gen = torch.Generator().manual_seed(seed)
    labels = torch.eye(3)[torch.randint(0, 3, (ROWS,), generator=gen)]
    labels[0] = 1 - labels[2]  # a dissimilar pair inside Omega
    m = len(OMEGA)
    U = torch.rand(m, C, generator=gen, dtype=torch.float64) * 2 - 1
    U_Z = torch.rand(m, C, generator=gen, dtype=torch.float64)
    U_L = torch.rand(ROWS, C, generator=gen, dtype=torch.float64) * 2 - 1
    S = soft_similarity(labels[OMEGA], labels).double()  # Omega x D
    B0 = torch.randint(0, 2, (ROWS, C), generator=gen).double() * 2 - 1
    return B0, U, U_L, U_Z, S


def database_loops(B, U, U_L, U_Z, S):
    """||U B^T - c S~||^2 + gamma ||B_Omega - U||^2 + alpha ||B - U_L||^2 + beta ||B_Omega - U_Z||^2, as loops."""
    total = 0.0
    for a, i in enumerate(OMEGA.tolist()):
        for j in range(ROWS):
            total += (sum(U[a, k] * B[j, k] for k in range(C)) - C * S[a, j]) ** 2
        for k in range(C):
            total += GAMMA * (B[i, k] - U[a, k]) ** 2 + BETA * (B[i, k] - U_Z[a, k]) ** 2
    for j, k in itertools.product(range(ROWS), range(C)):
        total += ALPHA * (B[j, k] - U_L[j, k]) ** 2
    return float(total)


def f_database(Bs, U, U_L, U_Z, S):
    return torch.stack([database_objective(B, U, OMEGA, S.T @ U, U_L, U_Z, GAMMA, ALPHA, BETA) for B in Bs])


@pytest.mark.parametrize("seed", range(3))
def test_database_objective_is_the_loop_objective_up_to_a_constant(seed):
    _, U, U_L, U_Z, S = database_problem(seed)
    picks = all_codes(ROWS, C)[torch.randperm(2 ** (ROWS * C), generator=torch.Generator().manual_seed(seed))[:6]]
    diffs = [database_loops(B, U, U_L, U_Z, S) - float(f_database(B[None], U, U_L, U_Z, S)[0]) for B in picks]
    assert max(diffs) - min(diffs) < 1e-8 * max(abs(d) for d in diffs) + 1e-9


@pytest.mark.parametrize("seed", range(4))
def test_database_update_columns_are_exact_minimisers_over_every_code(seed):
    B0, U, U_L, U_Z, S = database_problem(seed)
    B1 = database_update(B0, U, OMEGA, S.T @ U, U_L, U_Z, GAMMA, ALPHA, BETA)
    columns = all_codes(ROWS, 1)[:, :, 0]
    for k in range(C):
        seen = torch.cat([B1[:, :k], B0[:, k:]], dim=1)
        candidates = seen.expand(len(columns), ROWS, C).clone()
        candidates[:, :, k] = columns
        best = candidates[f_database(candidates, U, U_L, U_Z, S).argmin()]
        assert torch.equal(best[:, k], B1[:, k]), f"column {k} is not the brute-force minimiser"
    # rows outside Omega move too (they follow S~^T U and U_L), unlike discrete_update
    assert database_update(B0, U, OMEGA, S.T @ U, U_L, U_Z, GAMMA, ALPHA, BETA).shape == (ROWS, C)


@pytest.mark.parametrize("seed", range(3))
def test_database_update_with_omega_everything_is_the_discrete_update(seed):
    B0, U, U_L, U_Z, S = problem(seed)
    everything = torch.arange(M)
    assert torch.equal(database_update(B0, U, everything, S.T @ U, U_L, U_Z, GAMMA, ALPHA, BETA),
                       discrete_update(B0, U, U_L, U_Z, S, GAMMA, ALPHA, BETA))
