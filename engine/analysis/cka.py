"""Linear centred kernel alignment (CKA) between two representations of the same examples."""

from __future__ import annotations

import torch


def _centred(x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(x.shape[0], -1).to(torch.float64)
    return flat - flat.mean(dim=0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of x (n, ...) and y (n, ...), examples flattened: HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)).

    With centred features X, Y and linear kernels K = X X^T, L = Y Y^T this is
    <K, L>_F / (|K|_F |L|_F) = |Y^T X|_F^2 / (|X^T X|_F |Y^T Y|_F) (Kornblith et al. 2019). It compares
    layers of different widths, and it is unchanged by orthogonal transforms and isotropic scaling of either
    representation -- the invariances a comparison of two independently trained networks needs. The
    (n x n) Gram form is used when examples are fewer than features (conv maps flattened), the feature form
    otherwise, so the cost stays min(n, p)^2 * max(n, p). Computed in float64. A representation that is
    constant over the examples has no similarity to anything: the result is NaN.
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares representations of the same examples; got {x.shape[0]} and "
                         f"{y.shape[0]} examples")
    if x.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 examples, got {x.shape[0]}")
    xc, yc = _centred(x), _centred(y)
    n, p, q = xc.shape[0], xc.shape[1], yc.shape[1]
    if n < max(p, q):
        gram_x, gram_y = xc @ xc.T, yc @ yc.T
        cross = (gram_x * gram_y).sum()
        norm_x, norm_y = torch.linalg.matrix_norm(gram_x), torch.linalg.matrix_norm(gram_y)
    else:
        cross = torch.linalg.matrix_norm(yc.T @ xc) ** 2
        norm_x, norm_y = torch.linalg.matrix_norm(xc.T @ xc), torch.linalg.matrix_norm(yc.T @ yc)
    denominator = norm_x * norm_y
    if denominator == 0:
        return float("nan")
    return float(cross / denominator)
