"""SCHN losses and the discrete update of the database codes, as plain functions.

Everything follows ``shared/docs/method.md`` ("Objective for one mini-batch" and "Discrete
update of the database codes"). Shapes: ``U``, ``B`` are ``(m, c)``; labels are ``(m, K)``
multi-hot.
"""
from __future__ import annotations

import torch

from ..codes import to_signed
from ..errors import SchnError
from .common import bitwise_sweep, similarity

SIGN_ZERO_CHOICES = ("plus_one", "zero")


def soft_similarity(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """The balanced similarity ``S~`` of method.md, step 1, over the whole ``a x b`` matrix.

    With ``S = +-1``, ``r = sum(S) / sum(1 - S)`` and ``S~ = S (1 + r) - r``. Taken literally,
    ``sum(S) = P - N`` and ``sum(1 - S) = 2N`` (``P``/``N`` = numbers of similar/dissimilar
    pairs), so ``r = (P - N) / 2N``: similar pairs get ``1`` and dissimilar pairs
    ``-(1 + 2r) = -P/N``, exactly the value the doc states. With no dissimilar pair ``r`` would
    divide by zero; then ``S~ = S`` (all ones), the limit that keeps every value finite.
    """
    s = similarity(labels_a, labels_b).mul_(2).sub_(1)  # in place: Omega x Omega can be large
    dissimilar = s.numel() - s.sum()  # = sum(1 - S)
    if dissimilar == 0:
        return s
    r = s.sum() / dissimilar
    return s.mul_(1 + r).sub_(r)


def asymmetric_loss(U: torch.Tensor, B_b: torch.Tensor, S_b: torch.Tensor, gamma: float,
                    B_pair: torch.Tensor | None = None) -> torch.Tensor:
    """``l(U) = (12/c) mean((c S_b - U B_b^T)^2) + gamma mean((U - B_b)^2)``, ``S_b`` in {0, 1}.

    ``B_pair``: the codes the pair term compares the batch with (``pairing`` = sampled or
    database; ``S_b`` then holds the batch's rows against them); the quantisation term keeps the
    batch's own codes ``B_b``."""
    c = U.shape[1]
    pair_term = ((c * S_b - U @ (B_b if B_pair is None else B_pair).T) ** 2).mean()
    return (12.0 / c) * pair_term + gamma * ((U - B_b) ** 2).mean()


def _sign(x: torch.Tensor, sign_zero: str) -> torch.Tensor:
    if sign_zero == "plus_one":
        return to_signed(x)
    if sign_zero == "zero":  # the authors' np.sign: a zero argument leaves a 0 bit
        return torch.sign(x)
    raise SchnError(f"sign_zero must be one of {', '.join(SIGN_ZERO_CHOICES)}, got {sign_zero!r}")


def _linear_target(U, U_L, U_Z, S_t_U, gamma, alpha, beta, omega=None) -> torch.Tensor:
    """``P = Q + alpha U_L + beta U_Z`` with ``Q = c S~^T U + gamma U`` (method.md, step 2).

    ``S_t_U`` is ``S~^T U``. With ``omega`` (the rows of ``Omega`` among ``n`` database rows,
    ``S_t_U`` and ``U_L`` then ``n x c``) the gamma and beta terms enter those rows only: the
    target of :func:`database_update`."""
    c = U.shape[1]
    if omega is None:
        return c * S_t_U + gamma * U + alpha * U_L + beta * U_Z
    P = c * S_t_U + alpha * U_L
    P[omega] += gamma * U + beta * U_Z
    return P


def discrete_update(
    B: torch.Tensor,
    U: torch.Tensor,
    U_L: torch.Tensor,
    U_Z: torch.Tensor,
    S_tilde: torch.Tensor,
    gamma: float,
    alpha: float,
    beta: float,
    sign_zero: str = "plus_one",
) -> torch.Tensor:
    """One sweep over the bits (method.md, step 3); returns the new ``B`` (input untouched).

    ``B[:, k] = sign(Q[:, k] - B[:, !k] U[:, !k]^T U[:, k] + alpha U_L[:, k] + beta U_Z[:, k])``,
    each column using the columns already updated in this sweep. Each column is the exact
    minimiser of :func:`discrete_objective` given the others.
    """
    P = _linear_target(U, U_L, U_Z, S_tilde.T @ U, gamma, alpha, beta)
    return _sweep(B, U, P, sign_zero)


def _sweep(B, U, P, sign_zero):
    _sign(P[:0], sign_zero)  # an unknown sign_zero fails before the sweep
    return bitwise_sweep(B, U, P, sign=lambda x: _sign(x, sign_zero))


def discrete_objective(
    B: torch.Tensor,
    U: torch.Tensor,
    U_L: torch.Tensor,
    U_Z: torch.Tensor,
    S_tilde: torch.Tensor,
    gamma: float,
    alpha: float,
    beta: float,
) -> torch.Tensor:
    """``f(B) = ||B U^T||_F^2 - 2 tr(B^T P)``, ``P = Q + alpha U_L + beta U_Z``.

    Up to a constant independent of ``B`` (for ``B`` in {-1,+1}) this is
    ``||U B^T - c S~||^2 + gamma ||B - U||^2 + alpha ||B - U_L||^2 + beta ||B - U_Z||^2``.
    As a function of column ``k`` it is ``2 B_k . (B_!k U_!k^T U_k - P_k)`` + const, because
    ``||B_k||^2 = m``; hence the sign rule of :func:`discrete_update` minimises it exactly.
    """
    return _quadratic(B, U, _linear_target(U, U_L, U_Z, S_tilde.T @ U, gamma, alpha, beta))


def _quadratic(B, U, P) -> torch.Tensor:
    """``||B U^T||_F^2 - 2 tr(B^T P)``: what :func:`bitwise_sweep` minimises column by column."""
    return ((B @ U.T) ** 2).sum() - 2 * (B * P).sum()


def database_update(
    B: torch.Tensor,
    U: torch.Tensor,
    omega: torch.Tensor,
    S_t_U: torch.Tensor,
    U_L: torch.Tensor,
    U_Z: torch.Tensor,
    gamma: float,
    alpha: float,
    beta: float,
    sign_zero: str = "plus_one",
) -> torch.Tensor:
    """One sweep over the bits of *every* database code (``update_scope="database"``, as ADSH).

    ``B`` (n x c) all codes; ``U``, ``U_Z`` (m x c) the outputs of the rows ``omega``; ``U_L``
    (n x c) the label network over every item's label row; ``S_t_U`` = ``S~(Omega x D)^T U``
    (n x c). Minimises, column by column exactly, :func:`database_objective`:
    ``||U B^T - c S~||^2 + gamma ||B_Omega - U||^2 + alpha ||B - U_L||^2 + beta ||B_Omega - U_Z||^2``.
    With ``omega`` = every row it is :func:`discrete_update`.
    """
    return _sweep(B, U, _linear_target(U, U_L, U_Z, S_t_U, gamma, alpha, beta, omega), sign_zero)


def database_objective(B, U, omega, S_t_U, U_L, U_Z, gamma: float, alpha: float, beta: float) -> torch.Tensor:
    """:func:`discrete_objective` of :func:`database_update`, up to a constant independent of ``B``."""
    return _quadratic(B, U, _linear_target(U, U_L, U_Z, S_t_U, gamma, alpha, beta, omega))
