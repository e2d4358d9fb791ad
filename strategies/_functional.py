"""Pure tensor functions shared by several rules (no state, no Python loops over
coordinates or client pairs). All keep the input's device and dtype."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Column-wise order statistics (sort/topk/kthvalue) run over blocks of columns
# holding at most this many elements: it bounds their temporaries (sort's int64
# indices are twice the size of float32 values) and keeps a block in L2 cache,
# which made sort/topk over 100 x 1e5 updates about 25% faster than 1 << 24.
_BLOCK_ELEMS = 1 << 18


def by_column_blocks(fn: Callable[[torch.Tensor], torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """``fn`` maps an (n, b) block to a (b,) result; apply it to blocks of columns."""
    n, d = X.shape
    b = max(1, _BLOCK_ELEMS // max(n, 1))
    if b >= d:
        return fn(X)
    return torch.cat([fn(X[:, j : j + b]) for j in range(0, d, b)])


def coordinate_median(X: torch.Tensor) -> torch.Tensor:
    """Coordinate-wise median with numpy semantics (even n: mean of the two middle values)."""
    return by_column_blocks(_median_block, X)


def _median_block(X: torch.Tensor) -> torch.Tensor:
    n = X.shape[0]
    if n % 2 == 1:
        return X.median(dim=0).values
    # the two middle values at once: the n/2 + 1 smallest, sorted ascending
    # (one topk is faster than median + a search for the upper middle value)
    v = torch.topk(X, n // 2 + 1, dim=0, largest=False, sorted=True).values
    return (v[-2] + v[-1]) / 2


def weighted_mean(
    X: torch.Tensor, weights: torch.Tensor | None = None, mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean of the rows of X selected by ``mask`` (all when None), weighted by ``weights``.

    If the selected rows' weights sum to 0, they are averaged uniformly.
    Rows outside ``mask`` get coefficient exactly 0 (a huge excluded row cannot leak in).
    """
    if weights is None and mask is None:
        return X.mean(dim=0)
    c = torch.ones(X.shape[0], dtype=X.dtype, device=X.device)
    if mask is not None:
        c = c * mask.to(X.dtype)
    if weights is not None:
        cw = c * weights.to(X.dtype)
        if bool(cw.sum() > 0):
            c = cw
    return (c / c.sum()) @ X


def max_abs(X: torch.Tensor) -> float:
    """max |x| over all entries, without materialising |X| (aminmax streams once)."""
    lo, hi = X.aminmax()
    return max(-float(lo), float(hi))


def gram64(U: torch.Tensor, centre: torch.Tensor | str | None = None) -> torch.Tensor:
    """(n, n) float64 Gram matrix of the rows of U minus ``centre`` ("mean", a (d,)
    tensor or None). Computed in U's dtype; when float32 squares could overflow
    (entries above 1e15) the rows are promoted to float64 first (rare, costs a copy)."""
    X = U
    if U.dtype == torch.float32 and max_abs(U) > 1e15:
        X = U.to(torch.float64)
    if isinstance(centre, str):
        X = X - X.mean(dim=0)
    elif centre is not None:
        X = X - centre.to(X.dtype)
    return (X @ X.T).to(torch.float64)


def pairwise_sq_distances(X: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 squared Euclidean distances from ONE Gram matrix of the
    mean-centred rows (distances are translation invariant and centring reduces
    the cancellation of |x|^2 + |y|^2 - 2 x.y)."""
    G = gram64(X, "mean")
    sq = G.diagonal()
    D = (sq[:, None] + sq[None, :] - 2 * G).clamp_min_(0)
    D.fill_diagonal_(0)
    return D


def krum_scores(D: torch.Tensor, n_neighbours: int) -> torch.Tensor:
    """Krum score: sum of squared distances to the ``n_neighbours`` closest other rows."""
    n = D.shape[0]
    Dm = D + torch.diag(torch.full((n,), float("inf"), dtype=D.dtype, device=D.device))
    return torch.topk(Dm, n_neighbours, dim=1, largest=False).values.sum(dim=1)


def lowest_scores(scores: torch.Tensor, D: torch.Tensor, m: int) -> torch.Tensor:
    """Indices of the m lowest ``scores``; exact ties (e.g. a mutual nearest-neighbour
    pair when Krum uses one neighbour) are broken by the total squared distance to
    the other rows (finite entries of D), then by index, so the choice does not
    depend on the order of the clients in generic position."""
    total = torch.where(torch.isfinite(D), D, torch.zeros_like(D)).sum(dim=1)
    order = torch.sort(total, stable=True).indices
    order = order[torch.sort(scores[order], stable=True).indices]
    return order[:m]


def row_norms(X: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row, computed in float64 for the final reduction (no overflow)."""
    return torch.linalg.vector_norm(X, dim=1, dtype=torch.float64)


def clip_factors(norms: torch.Tensor, bound: float | torch.Tensor) -> torch.Tensor:
    """min(1, bound / norm), with 1 for zero-norm rows."""
    bound = torch.as_tensor(bound, dtype=norms.dtype, device=norms.device)
    return torch.where(norms > bound, bound / norms.clamp_min(1e-300), torch.ones_like(norms))


def gaussian(
    shape: tuple[int, ...], like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    """Standard normal noise on ``like``'s device/dtype, drawn from ``generator``
    (which may live on another device) or from torch's default RNG when None."""
    if generator is None:
        return torch.randn(shape, dtype=like.dtype, device=like.device)
    z = torch.randn(shape, dtype=like.dtype, device=generator.device, generator=generator)
    return z.to(like.device)


def robust_z_scores(s: torch.Tensor) -> torch.Tensor:
    """|s_i - median(s)| / (MAD(s) / 0.6745); guarded when MAD = 0.

    With MAD = 0 (more than half of the statistics equal), the scale falls back
    to the mean absolute deviation times sqrt(pi/2) (also consistent for a
    normal); if that is 0 too, every client is identical and all z are 0.
    """
    med = coordinate_median(s[:, None])[0]
    dev = (s - med).abs()
    scale = coordinate_median(dev[:, None])[0] / 0.6745
    if not bool(scale > 0):
        scale = dev.mean() * math.sqrt(math.pi / 2)
    if not bool(scale > 0):
        return torch.zeros_like(s)
    return dev / scale


def top_direction(
    Xc: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    max_iter: int = 300,
    rtol: float = 1e-7,
) -> tuple[float, torch.Tensor]:
    """Top eigenpair (lambda, v) of the empirical covariance Xc^T Xc / k of the
    centred (k, d) matrix ``Xc`` without ever forming a d x d matrix.

    k <= d: exact, from the k x k Gram matrix Xc Xc^T (v = Xc^T u / |Xc^T u|).
    k > d : block power (subspace) iteration with Rayleigh-Ritz, using only
            products with Xc and Xc^T; the random start comes from ``generator``
            and lives in R^d, so permuting the rows does not change the result.
    lambda is returned as a Python float (float64), v as a unit (d,) tensor.
    """
    k, d = Xc.shape
    # Work on Xc / scale so huge entries (a 1e30 client) neither overflow nor break eigh.
    scale = max_abs(Xc)
    if not math.isfinite(scale) or scale == 0.0:
        scale = 1.0
    Xc = Xc / scale
    lam, v = _top_direction_unit(Xc, generator, max_iter, rtol)
    return lam * scale * scale, v


def _top_direction_unit(Xc, generator, max_iter, rtol):
    k, d = Xc.shape
    if k <= d:
        G = (Xc @ Xc.T).to(torch.float64) / k
        evals, evecs = torch.linalg.eigh(G)
        lam = float(evals[-1].clamp_min(0))
        v = Xc.T @ evecs[:, -1].to(Xc.dtype)
    else:
        b = min(d, 8)
        Q, _ = torch.linalg.qr(gaussian((d, b), Xc, generator))
        lam_prev = -1.0
        lam = 0.0
        s = torch.zeros(b, dtype=torch.float64, device=Xc.device)
        for _ in range(max_iter):
            Y = Xc @ Q
            H = (Y.T @ Y).to(torch.float64) / k
            evals, evecs = torch.linalg.eigh(H)
            lam, s = float(evals[-1].clamp_min(0)), evecs[:, -1]
            if b == d or abs(lam - lam_prev) <= rtol * max(lam, 1e-300):
                break
            lam_prev = lam
            Q, _ = torch.linalg.qr(Xc.T @ Y)
        v = Q @ s.to(Xc.dtype)
    nv = torch.linalg.vector_norm(v)
    v = v / nv if bool(nv > 0) else torch.zeros_like(v)
    return lam, v


def argmin_by_content(scores: torch.Tensor, X: torch.Tensor) -> int:
    """argmin of ``scores`` with exact ties broken by the rows' content (smallest distance
    to the mean of X, then coordinate sum), not their position: mutual nearest neighbours
    have identical Krum scores, and the choice must not depend on client order."""
    tied = (scores == scores.min()).nonzero().squeeze(1)
    if len(tied) == 1:
        return int(tied[0])
    Xc = X[tied] - X.mean(dim=0)  # centred: the choice is also translation invariant
    key = row_norms(Xc) + 1e-12 * Xc.sum(dim=1, dtype=torch.float64)
    return int(tied[torch.argmin(key)])


def cosine_matrix(U: torch.Tensor) -> torch.Tensor:
    """(n, n) float64 cosine similarities of the rows of U, EXACTLY symmetric.

    A float32 Gram matrix X X^T is not bitwise symmetric on every BLAS (cuBLAS tiles,
    some CPU kernels): G_ij and G_ji can differ in the last bits (~5e-9 relative on
    d ~ 4e4 updates), and consumers such as sklearn's HDBSCAN(metric="precomputed")
    reject a matrix that is not symmetric to 1e-9. So the Gram matrix is symmetrised
    in float64, (G + G^T) / 2, which IEEE addition makes exactly symmetric.
    Zero rows have similarity 0 with every row, themselves included (as
    sklearn.metrics.pairwise.cosine_similarity); other diagonal entries are exactly 1.
    """
    scale = max_abs(U)
    # |x|^2 of a float32 row overflows above ~1e19; cosines are scale free
    Us = U / scale if scale > 1e15 else U
    G = (Us @ Us.T).to(torch.float64)
    G = (G + G.T) / 2
    nrm = G.diagonal().clamp_min(0).sqrt()
    denom = nrm[:, None] * nrm[None, :]
    cos = torch.where(denom > 0, G / denom.clamp_min(1e-300), torch.zeros_like(G)).clamp(-1, 1)
    nonzero = nrm > 0
    cos.diagonal().copy_(nonzero.to(cos.dtype))
    return cos
