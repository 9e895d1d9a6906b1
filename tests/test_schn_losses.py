"""SCHN loss and similarity functions against their formulas written out with loops."""
import itertools

import pytest
import torch

from schn.methods.schn_loss import asymmetric_loss, similarity, soft_similarity


def random_labels(gen, n, k, multi=False):
    if multi:
        return (torch.rand(n, k, generator=gen) < 0.4).float()
    return torch.eye(k)[torch.randint(0, k, (n,), generator=gen)]


def loop_similarity(a, b):
    S = torch.zeros(len(a), len(b))
    for i, j in itertools.product(range(len(a)), range(len(b))):
        S[i, j] = 1.0 if float(a[i] @ b[j]) > 0 else 0.0
    return S


@pytest.mark.parametrize("multi", [False, True])
def test_in_batch_similarity_matches_loops(multi):
    gen = torch.Generator().manual_seed(1)
    a, b = random_labels(gen, 6, 4, multi), random_labels(gen, 5, 4, multi)
    assert torch.equal(similarity(a, b), loop_similarity(a, b))


@pytest.mark.parametrize("seed", range(3))
def test_soft_similarity_matches_the_doc_formula_and_balances(seed):
    gen = torch.Generator().manual_seed(seed)
    a, b = random_labels(gen, 7, 3, multi=seed == 2), random_labels(gen, 9, 3, multi=seed == 2)
    S01 = loop_similarity(a, b)
    # The doc literally: S = +-1, r = sum(S) / sum(1 - S), S~ = S (1 + r) - r.
    S = [[2 * S01[i, j].item() - 1 for j in range(9)] for i in range(7)]
    r = sum(map(sum, S)) / sum(1 - s for row in S for s in row)
    expected = torch.tensor([[s * (1 + r) - r for s in row] for row in S])
    got = soft_similarity(a, b)
    assert torch.allclose(got, expected, atol=1e-6)
    # ... which is 1 for similar pairs and -P/N for dissimilar ones.
    P, N = S01.sum().item(), (1 - S01).sum().item()
    assert torch.allclose(got[S01 == 1], torch.tensor(1.0))
    assert torch.allclose(got[S01 == 0], torch.tensor(-P / N), atol=1e-6)


def test_soft_similarity_without_dissimilar_pairs_is_all_ones():
    y = torch.ones(3, 2)
    assert torch.equal(soft_similarity(y, y), torch.ones(3, 3))


def test_asymmetric_loss_matches_loops():
    gen = torch.Generator().manual_seed(0)
    m, c, gamma = 5, 4, 10.0
    U = torch.rand(m, c, generator=gen) * 2 - 1
    B = torch.randint(0, 2, (m, c), generator=gen).float() * 2 - 1
    S = loop_similarity(*(2 * [random_labels(gen, m, 3)]))
    pair = sum((c * S[i, j] - sum(U[i, k] * B[j, k] for k in range(c))) ** 2
               for i in range(m) for j in range(m)) / (m * m)
    quant = sum((U[i, k] - B[i, k]) ** 2 for i in range(m) for k in range(c)) / (m * c)
    expected = (12 / c) * pair + gamma * quant
    assert torch.allclose(asymmetric_loss(U, B, S, gamma), torch.as_tensor(expected), rtol=1e-5)


@pytest.mark.parametrize("multi", [False, True])
def test_soft_similarity_is_adsh_balanced_similarity(multi):
    # SCHN's pairing and update_scope options build S~ in blocks with ADSH's functions: same values
    from schn.methods.adsh import adsh_similarity, balance_ratio
    gen = torch.Generator().manual_seed(4)
    a, b = random_labels(gen, 6, 3, multi), random_labels(gen, 11, 3, multi)
    assert torch.allclose(adsh_similarity(a, b, balance_ratio(a, b)), soft_similarity(a, b), atol=1e-6)


def test_asymmetric_loss_against_other_codes_matches_loops():
    gen = torch.Generator().manual_seed(2)
    m, n, c, gamma = 4, 7, 3, 5.0
    U = torch.rand(m, c, generator=gen) * 2 - 1
    B_own = torch.randint(0, 2, (m, c), generator=gen).float() * 2 - 1
    B_pair = torch.randint(0, 2, (n, c), generator=gen).float() * 2 - 1
    S = torch.rand(m, n, generator=gen) * 2 - 1
    pair = sum((c * S[i, j] - sum(U[i, k] * B_pair[j, k] for k in range(c))) ** 2
               for i in range(m) for j in range(n)) / (m * n)
    quant = sum((U[i, k] - B_own[i, k]) ** 2 for i in range(m) for k in range(c)) / (m * c)
    expected = (12 / c) * pair + gamma * quant
    assert torch.allclose(asymmetric_loss(U, B_own, S, gamma, B_pair), torch.as_tensor(expected), rtol=1e-5)
