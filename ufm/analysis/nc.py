"""Neural-collapse metrics (docs/science.md, section 3): pure, jittable and vmappable.

Conventions (defaults; the variants are returned under their own names):
  mu_k = class means, mu_G = mean of the class means ("class_means", default) or of all samples
  ("samples"), M = [mu_k - mu_G] (d, K), Sigma_W = (1/N) sum_i (h_i - mu_{y_i})(h_i - mu_{y_i})^T,
  Sigma_B = (1/K) M M^T, E = (I - 11^T/K)/sqrt(K-1).

  nc1          (1/K) tr(Sigma_W Sigma_B^+), Sigma_B^+ at rank min(K-1, d) (Zhu et al. 2021)
  nc1_papyan   tr(Sigma_W Sigma_B^+) (Papyan et al. 2020)
  nc1_trace    tr(Sigma_W) / tr(Sigma_B)
  nc1_cdnv     mean over k != k' of (var_k + var_k') / (2 ||mu_k - mu_k'||^2) (Galanti et al. 2022)
  nc2_W, nc2_H || G / ||G||_F - E ||_F for G = W W^T and G = M^T M
  nc3          || W M / ||W M||_F - E ||_F (Zhu et al. 2021)
  nc3_papyan   || W^T/||W||_F - M/||M||_F ||_F^2 (Papyan et al. 2020)
  nc4          fraction of samples whose nearest-class-mean decision differs from argmax(W h + b)
  equinorm_W/H std/mean of ||w_k|| and of ||mu_k - mu_G||
  equiangular_W/H  mean over k != k' of |cos + 1/(K-1)|
  maxangle_W/H     mean over k of |max_{k' != k} cos + 1/(K-1)| (Papyan's max-angle deviation)

Feature compression (effective rank, coding rate, rate reduction) and the geometric-decay fit
of layer-wise NC1 are host-side:
`ufm.analysis.compression` and `ufm.analysis.layerwise`.

Sigma_B^+ never forms a d x d matrix: with M = U S V^T, tr(Sigma_W Sigma_B^+) =
(K/N) sum_j ||U_j^T (H - mu_Y)||^2 / S_j^2, which keeps float32 accurate (no squared condition
number) and NC1 a sum of squares, never negative. Metrics that need class means are NaN when
the means coincide (the collapsed-to-zero solution), where they are undefined.
"""
from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from ufm.model.problem import x64_scope

GLOBAL_MEANS = ("class_means", "samples")


# The K x K and K x N matrices behind the metrics are formed a block of rows at a time, about
# this many entries per block: K = 10^4 classes would need 800 MB per float64 matrix, and
# the class-mean distances of nc1_cdnv a K x K x d array.
CHUNK_ENTRIES = 1 << 22


def _map_rows(fn, num_rows: int, row_length: int):
    """fn(indices) on consecutive blocks of row indices (about CHUNK_ENTRIES / row_length
    rows each; one block when that covers them all), results stacked along axis 0, num_rows of
    them. The last block repeats the last row to its full size; the repeats are cut off."""
    rows = max(1, min(num_rows, CHUNK_ENTRIES // max(row_length, 1)))
    blocks = -(-num_rows // rows)
    if blocks == 1:
        return fn(jnp.arange(num_rows))
    out = jax.lax.map(lambda start: fn(jnp.minimum(start + jnp.arange(rows), num_rows - 1)),
                      jnp.arange(blocks) * rows)
    return jax.tree.map(lambda x: x.reshape((blocks * rows,) + x.shape[2:])[:num_rows], out)


def _angle_metrics(X, K):
    """(equinorm, equiangular, maxangle) of the rows of X (K, p), cosines a block of rows at a
    time."""
    norms = jnp.linalg.norm(X, axis=1)
    equinorm = jnp.std(norms) / jnp.mean(norms)
    unit = X / norms[:, None]

    def rows(idx):
        cos = unit[idx] @ unit.T  # (rows, K)
        off = jnp.arange(K)[None, :] != idx[:, None]
        deviation = jnp.sum(jnp.where(off, jnp.abs(cos + 1.0 / (K - 1)), 0.0), axis=1)
        return deviation, jnp.max(jnp.where(off, cos, -jnp.inf), axis=1)

    deviation, max_cos = _map_rows(rows, K, K)
    equiangular = jnp.sum(deviation) / float(K * (K - 1))  # a float: over 2^31 from K = 46,342
    maxangle = jnp.mean(jnp.abs(max_cos + 1.0 / (K - 1)))
    return equinorm, equiangular, maxangle


def _gram_to_etf(A, B):
    """|| G / ||G||_F - E ||_F for G = A B^T (A, B: (K, p)) and E = (I - 11^T/K)/sqrt(K-1),
    G formed a block of rows at a time (two passes: ||G||_F, then the distance)."""
    K = A.shape[0]
    scale = 1.0 / jnp.sqrt(jnp.asarray(K - 1, A.dtype))
    norm = jnp.sqrt(jnp.sum(_map_rows(lambda idx: jnp.sum((A[idx] @ B.T) ** 2, axis=1), K, K)))

    def rows(idx):
        E = jnp.where(jnp.arange(K)[None, :] == idx[:, None], scale, 0.0) - scale / K
        return jnp.sum((A[idx] @ B.T / norm - E) ** 2, axis=1)

    return jnp.sqrt(jnp.sum(_map_rows(rows, K, K)))


def gram_pinv(C: ArrayLike) -> jax.Array:
    """The pseudo-inverse of a symmetric positive semidefinite C (K, K) by matmuls only
    (no LAPACK or cuSOLVER call, so it vectorizes on a GPU): the Newton-Schulz iteration

        X_{k+1} = X_k (2 I - C X_k),    X_0 = C / ||C||_F^2,

    which keeps X in the range of C (its null space, e.g. the class means' 1, stays null) and
    sends every eigenvalue lambda of C X to 1 quadratically once lambda X_0 is not small
    (Ben-Israel & Greville 2003, sec. 7.7). It runs until an iterate moves by less than
    sqrt(eps) of its size (at most MAX_NEWTON_SCHULZ), then polishes twice. Eigenvalues below
    about 2^-(iterations / 2) of the largest (a condition number of M beyond ~10^7 in float64)
    are left partly uninverted: a soft truncation where the SVD form cuts at eps."""
    dtype = C.dtype
    scale = jnp.sum(C * C)
    X = C / jnp.where(scale > 0, scale, 1.0)
    eye = jnp.eye(C.shape[-1], dtype=dtype)
    tol = jnp.sqrt(jnp.finfo(dtype).eps)

    def step(X):
        return X @ (2.0 * eye - C @ X)

    def going(carry):
        k, _, moved = carry
        return (k < MAX_NEWTON_SCHULZ) & moved

    def body(carry):
        k, X, _ = carry
        new = step(X)
        size = jnp.max(jnp.abs(new))
        return k + 1, new, jnp.max(jnp.abs(new - X)) > tol * size

    _, X, _ = jax.lax.while_loop(going, body, (jnp.zeros((), jnp.int32), X, jnp.array(True)))
    return step(step(X))


# Newton-Schulz iterations at most: ~2 log2(condition number of M) + log2(K) are needed.
MAX_NEWTON_SCHULZ = 100


def _class_statistics(H, labels, K, global_mean, max_rank=None, gram=False):
    """Counts, class means, M, within-class deviations and NC1 (Papyan's
    tr(Sigma_W Sigma_B^+)) of features H (d, N); Sigma_B^+ at rank K-1 (or `max_rank`).
    Class sums are segment sums over the labels (no K x N one-hot).

    `gram`: the matmul-only form the run's records program uses (no SVD: batched SVDs of
    small matrices are slow on GPUs), on the smaller side of M (d x K). With w_i = h_i - mu_y_i,
    tr(Sigma_W Sigma_B^+) = (K/N) sum_i ||M^+ w_i||^2, and M^+ w = C^+ M^T w for C = M^T M
    (K x K, used when K <= d) or w^T M^+T M^+ w = w^T D^+ w for D = M M^T (d x d, used when
    d < K: at K = 10^5 classes the K x K form needs hundreds of GiB and its C^+ M^T W is
    K x N); the pseudo-inverse by `gram_pinv`; the rank is min(K-1, d) through the null space
    of the Gram matrix itself (class means as the global mean; not for `max_rank` or the sample
    mean, which keep the SVD)."""
    d, N = H.shape
    dtype = H.dtype
    counts = jax.ops.segment_sum(jnp.ones((N,), dtype), labels, K)  # (K,)
    means = jax.ops.segment_sum(H.T, labels, K).T / counts[None, :]  # (d, K)
    mu_G = jnp.mean(means, axis=1) if global_mean == "class_means" else jnp.mean(H, axis=1)
    M = means - mu_G[:, None]  # (d, K)
    within = H - means[:, labels]  # (d, N): h_i - mu_{y_i}
    nan = jnp.asarray(jnp.nan, dtype)
    if gram and max_rank is None and global_mean == "class_means":
        if K <= d:
            C = M.T @ M
            defined = jnp.trace(C) > 0
            projected = gram_pinv(C) @ (M.T @ within)  # (K, N)
            total = jnp.sum(projected**2)
        else:
            D = M @ M.T
            defined = jnp.trace(D) > 0
            total = jnp.sum(within * (gram_pinv(D) @ within))  # (d, N) at most
        nc1_papyan = jnp.where(defined, (K / N) * total, nan)
        return counts, means, M, within, defined, nan, nc1_papyan

    # NC1 through the SVD of M, truncated at rank min(K-1, d) and at round-off.
    U, S, _ = jnp.linalg.svd(M, full_matrices=False)
    eps = jnp.finfo(dtype).eps
    rank = K - 1 if max_rank is None else max_rank
    keep = (jnp.arange(S.shape[0]) < rank) & (S > eps * max(d, K) * S[0])
    inv_sq = jnp.where(keep, 1.0 / jnp.where(keep, S, 1.0) ** 2, 0.0)
    projected_sq = jnp.sum((U.T @ within) ** 2, axis=1)  # (r,)
    defined = S[0] > 0
    nc1_papyan = jnp.where(defined, (K / N) * jnp.sum(inv_sq * projected_sq), nan)
    return counts, means, M, within, defined, nan, nc1_papyan


def nc1(H: ArrayLike, labels: ArrayLike, num_classes: int, *,
        global_mean: str = "class_means") -> jax.Array:
    """NC1 = (1/K) tr(Sigma_W Sigma_B^+) of features H (d, N) alone (no classifier needed): the
    layer-wise NC1 of a network's intermediate representations (Papyan et al. 2020; He & Su
    2023, "progressive separation"). d may be large: no d x d matrix is formed."""
    if global_mean not in GLOBAL_MEANS:
        raise ValueError(f"global_mean={global_mean!r} is not allowed: one of {list(GLOBAL_MEANS)}")
    return (
        _class_statistics(H, jnp.asarray(labels), int(num_classes), global_mean)[-1] / num_classes
    )


def _nc_metrics(W, H, labels, b, global_mean, gram=False):
    K, d = W.shape
    N = H.shape[1]
    dtype = H.dtype
    counts, means, M, within, defined, nan, nc1_papyan = _class_statistics(
        H, labels, K, global_mean, gram=gram)
    trace_W = jnp.sum(within**2) / N
    trace_B = jnp.sum(M**2) / K
    nc1_trace = jnp.where(defined, trace_W / jnp.where(defined, trace_B, 1.0), nan)

    var_k = jax.ops.segment_sum(jnp.sum(within**2, axis=0), labels, K) / counts  # (K,)
    means_T = means.T  # (K, d)

    def cdnv_rows(idx):
        sq_dist = jnp.sum((means_T[idx][:, None, :] - means_T[None, :, :]) ** 2, axis=2)
        off = jnp.arange(K)[None, :] != idx[:, None]
        ratio = (var_k[idx][:, None] + var_k[None, :]) / (2.0 * jnp.where(off, sq_dist, 1.0))
        return jnp.sum(jnp.where(off, ratio, 0.0), axis=1)

    nc1_cdnv = jnp.sum(_map_rows(cdnv_rows, K, K * d)) / float(K * (K - 1))
    nc3_papyan = jnp.sum((W.T / jnp.linalg.norm(W) - M / jnp.linalg.norm(M)) ** 2)

    bias = jnp.zeros((K,), dtype) if b is None else b
    means_sq = jnp.sum(means**2, axis=0)

    def nc4_samples(idx):
        X = H[:, idx]
        sq_to_means = means_sq[:, None] - 2.0 * means_T @ X  # (K, samples), up to ||h||^2
        return jnp.argmin(sq_to_means, axis=0) != jnp.argmax(W @ X + bias[:, None], axis=0)

    nc4 = jnp.mean(_map_rows(nc4_samples, N, K).astype(dtype))
    # argmin / argmax of NaN or inf still pick a class, so a non-finite point would get a
    # plausible NC4; every other metric is NaN there. (A non-finite H column makes its class
    # mean non-finite: the means' sum catches it without another pass over H.)
    finite = jnp.isfinite(jnp.sum(means)) & jnp.isfinite(jnp.sum(W)) & jnp.isfinite(
        jnp.sum(bias))
    nc4 = jnp.where(finite, nc4, jnp.nan)

    eqn_W, eqa_W, maxa_W = _angle_metrics(W, K)
    eqn_H, eqa_H, maxa_H = _angle_metrics(M.T, K)
    return {
        "nc1": nc1_papyan / K,
        "nc1_papyan": nc1_papyan,
        "nc1_trace": nc1_trace,
        "nc1_cdnv": nc1_cdnv,
        "nc2_W": _gram_to_etf(W, W),
        "nc2_H": _gram_to_etf(M.T, M.T),
        "nc3": _gram_to_etf(W, M.T),
        "nc3_papyan": nc3_papyan,
        "nc4": nc4,
        "equinorm_W": eqn_W,
        "equinorm_H": eqn_H,
        "equiangular_W": eqa_W,
        "equiangular_H": eqa_H,
        "maxangle_W": maxa_W,
        "maxangle_H": maxa_H,
    }


METRIC_NAMES = (
    "nc1", "nc1_papyan", "nc1_trace", "nc1_cdnv", "nc2_W", "nc2_H", "nc3", "nc3_papyan", "nc4",
    "equinorm_W", "equinorm_H", "equiangular_W", "equiangular_H", "maxangle_W", "maxangle_H",
)


_nc_metrics_jit = jax.jit(_nc_metrics, static_argnames=("global_mean", "gram"))


def run_metrics(W: ArrayLike, H: ArrayLike, labels: ArrayLike, b: ArrayLike | None = None) -> dict:
    """`nc_metrics` as a run's records program computes them (inside jit/vmap): the same
    definitions with NC1's Sigma_B^+ by matmuls (`_class_statistics(gram=True)`), so that the
    compiled program holds no decomposition (no LAPACK call on a CPU, no cuSOLVER call on a
    GPU). Equal to `nc_metrics` to round-off wherever M's condition number is below ~1e7."""
    return _nc_metrics(W, H, labels, b, "class_means", gram=True)


def check_inputs(W: ArrayLike, H: ArrayLike, labels: ArrayLike, b: ArrayLike | None = None) -> None:
    """Raise ValueError naming the argument, what it is and what is allowed, before anything
    is computed: W (K, d), H (d, N), integer labels (N,) in 0..K-1 with every class present,
    b (K,). Shapes and dtypes are checked inside jit too; the label values only where they are
    concrete (not traced)."""
    shape = lambda x: tuple(np.shape(x))
    if len(shape(W)) != 2:
        raise ValueError(f"W has shape {shape(W)}: a (K, d) classifier is required")
    if len(shape(H)) != 2:
        raise ValueError(f"H has shape {shape(H)}: (d, N) features (one column per sample) are "
                         "required")
    (K, d), (d_H, N) = shape(W), shape(H)
    if K < 2:
        raise ValueError(f"W has shape {shape(W)}: K = {K} class; neural collapse is measured "
                         "between classes, at least 2 are required")
    if d_H != d:
        hint = " (H looks transposed: pass H.T)" if N == d else ""
        raise ValueError(f"H has shape {shape(H)} but W has shape {shape(W)}: H must be (d, N) "
                         f"= ({d}, N), one column per sample{hint}")
    if len(shape(labels)) == 2 and shape(labels) in ((N, K), (K, N)):
        raise ValueError(f"labels have shape {shape(labels)}: integer class indices (N,) = "
                         f"({N},) are required, not one-hot rows (pass labels.argmax(axis="
                         f"{1 if shape(labels) == (N, K) else 0}))")
    if shape(labels) != (N,):
        raise ValueError(f"labels have shape {shape(labels)}: one integer class index per "
                         f"sample, ({N},), is required (H has {N} columns)")
    dtype = getattr(labels, "dtype", None) or np.asarray(labels).dtype
    if not np.issubdtype(dtype, np.integer):
        raise ValueError(f"labels have dtype {dtype}: integer class indices 0..{K - 1} are "
                         "required")
    if b is not None and shape(b) != (K,):
        raise ValueError(f"b has shape {shape(b)}: a bias of shape ({K},) (one per class) is "
                         "required, or b=None")
    if isinstance(labels, jax.core.Tracer):
        return
    values = np.asarray(labels)
    low, high = int(values.min(initial=0)), int(values.max(initial=0))
    if low < 0 or high >= K:
        bad = low if low < 0 else high
        raise ValueError(f"labels hold {bad}: class indices must lie in 0..{K - 1} (W has {K} "
                         "rows)")
    empty = np.flatnonzero(np.bincount(values, minlength=K) == 0)
    if empty.size:
        listed = ", ".join(map(str, empty[:10])) + (" ..." if empty.size > 10 else "")
        many = empty.size > 1
        raise ValueError(f"class{'es' if many else ''} {listed} {'have' if many else 'has'}"
                         " no samples: every class 0..K-1 needs at least one (NC1 and the class "
                         "means are undefined otherwise); keep only the rows of W whose classes "
                         "occur, with labels renumbered")


def nc_metrics(W: ArrayLike, H: ArrayLike, labels: ArrayLike, b: ArrayLike | None = None, *,
               global_mean: str = "class_means") -> dict:
    """All NC metrics of classifier W (K, d), features H (d, N) with integer labels (N,) and
    optional bias b (K,). Pure and jittable (call it inside jit/vmap directly, or from Python,
    where float64 inputs are computed in float64 without touching global flags).

    Returns a dict of scalars; see the module docstring for each definition.
    """
    if global_mean not in GLOBAL_MEANS:
        raise ValueError(f"global_mean={global_mean!r} is not allowed: one of {list(GLOBAL_MEANS)}")
    check_inputs(W, H, labels, b)
    if isinstance(H, jax.core.Tracer) or isinstance(W, jax.core.Tracer):
        return _nc_metrics(W, H, labels, b, global_mean)
    dtype = np.promote_types(*(getattr(x, "dtype", None) or np.asarray(x).dtype for x in (W, H)))
    if dtype not in (np.float32, np.float64):
        # Integers in float64 (float32 keeps 24 bits: int64 values near 2^40 lose the metrics
        # entirely), half precisions in float32.
        integer = np.issubdtype(dtype, np.integer) or dtype == np.bool_
        dtype = np.dtype(np.float64 if integer else np.float32)
    with x64_scope(dtype):
        W, H = jnp.asarray(W, dtype), jnp.asarray(H, dtype)
        b = None if b is None else jnp.asarray(b, dtype)
        return _nc_metrics_jit(W, H, jnp.asarray(labels), b, global_mean)


# ------------------------------------------------------------ multi-label (pick-all-label) metrics


def _angle(a, b):
    """Angle between the columns of a and b (d, m), stable near 0: 2 atan2(|u - v|, |u + v|)
    for unit u, v."""
    u = a / jnp.linalg.norm(a, axis=0, keepdims=True)
    v = b / jnp.linalg.norm(b, axis=0, keepdims=True)
    return 2.0 * jnp.arctan2(jnp.linalg.norm(u - v, axis=0), jnp.linalg.norm(u + v, axis=0))


def multilabel_metrics(W: ArrayLike, H: ArrayLike, sample_sets: ArrayLike,
                       label_sets: Sequence[Sequence[int]], b: ArrayLike | None = None) -> dict:
    """NC metrics of a multi-label UFM point (Li et al. 2024, "Neural collapse in multi-label
    learning with pick-all-label loss"). `sample_sets` (N,) indexes each sample's label set in
    `label_sets` (a static tuple of sorted class tuples holding every singleton (k,)).

    nc1: NC1 with each label set as a class (within-set variability; Sigma_B^+ at rank K-1,
    the dimension the set means span at collapse); nc1_single: NC1 of the
    single-label samples; nc2_W, nc2_H, nc3, nc4 and the rest of `nc_metrics`: on the
    single-label samples (the ETF geometry of the single-label means); nc_m: mean over label
    sets S with |S| >= 2 of the angle (radians) between mu_S - mu_G and sum_{k in S}
    (mu_k - mu_G), mu_G the mean of the single-label means (0 when every multi-label mean is
    a scaled sum of its classes' means). Jittable (label_sets and sample_sets are static);
    from Python, float64 inputs are computed in float64."""
    if isinstance(H, jax.core.Tracer) or isinstance(W, jax.core.Tracer):
        return _multilabel_metrics(W, H, sample_sets, label_sets, b)
    dtype = np.promote_types(*(getattr(x, "dtype", None) or np.asarray(x).dtype for x in (W, H)))
    with x64_scope(dtype):
        W, H = jnp.asarray(W, dtype), jnp.asarray(H, dtype)
        b = None if b is None else jnp.asarray(b, dtype)
        return {k: float(v) for k, v in _multilabel_metrics(W, H, sample_sets, label_sets,
                                                              b).items()}


def _multilabel_metrics(W, H, sample_sets, label_sets, b):
    sample_sets = np.asarray(sample_sets)
    K = W.shape[0]
    index = {s: i for i, s in enumerate(label_sets)}
    singles = np.array([index[(k,)] for k in range(K)])
    single_class = {int(i): k for k, i in enumerate(singles)}
    keep = np.flatnonzero(np.isin(sample_sets, singles))
    labels_single = np.array([single_class[int(i)] for i in sample_sets[keep]], np.int32)
    found = dict(_nc_metrics(W, H[:, keep], jnp.asarray(labels_single), b, "class_means"))
    S = len(label_sets)
    found["nc1_single"] = found["nc1"]
    # The set means of a collapsed point span the K-1 dimensions of the single-label means:
    # Sigma_B^+ at rank K-1, so round-off directions do not divide the within-set spread.
    found["nc1"] = _class_statistics(H, jnp.asarray(sample_sets), S, "class_means",
                                     max_rank=K - 1)[-1] / S
    sets = jnp.asarray(sample_sets)
    means = jax.ops.segment_sum(H.T, sets, S).T / jax.ops.segment_sum(
        jnp.ones((H.shape[1],), H.dtype), sets, S)[None, :]  # (d, S)
    single_means = means[:, singles]
    mu_G = jnp.mean(single_means, axis=1, keepdims=True)
    multi = [i for i, s in enumerate(label_sets) if len(s) >= 2]
    if multi:
        members = np.zeros((K, len(multi)))
        for j, i in enumerate(multi):
            members[list(label_sets[i]), j] = 1.0
        summed = (single_means - mu_G) @ jnp.asarray(members, H.dtype)
        found["nc_m"] = jnp.mean(_angle(means[:, np.array(multi)] - mu_G, summed))
    else:
        found["nc_m"] = jnp.asarray(jnp.nan, H.dtype)
    return found
