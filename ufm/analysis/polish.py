"""A certified polish of spherical codes: from a search's end point to a KKT point of the
max-min problem, to round-off, with the certificate (active set, multipliers, residual).

The Tammes problem on K unit vectors w_i in R^d: maximize the minimum pairwise distance, i.e.
minimize s = max_{i<j} <w_i, w_j> (the distance is sqrt(2 - 2 s)). A point is a KKT point of
min s subject to <w_i, w_j> <= s and ||w_i||^2 = 1 when, with A the pairs at <w_i, w_j> = s,
there are multipliers mu_ij >= 0 on A summing to 1 and nu_i with

    sum_{j : ij in A} mu_ij w_j + 2 nu_i w_i = 0        for every i,

which is: 0 lies in the convex hull of the active pairs' Riemannian gradients (the gradient of
<w_i, w_j> projected to the tangent spaces of the spheres). `polish_tammes`:

1. descent on the max over the near-active pairs (those within `window` of the maximum): the
   min-norm point of the convex hull of their Riemannian gradients (Wolfe's algorithm,
   `gnc.min_norm_point`) is a common descent direction; a step along it, retracted by
   normalization, with a backtracking line search on the true maximum, the window narrowed as
   the max falls;
2. Newton on the KKT system of the active set found (the equalities <w_i, w_j> = s on A,
   ||w_i||^2 = 1, stationarity and sum mu = 1, unknowns W, s, mu, nu; least-norm steps, since
   rotations and rattlers leave it singular), a pair with a negative multiplier dropped and a
   pair that rises above s added, until the residual is at round-off;
3. the certificate: the residual of every KKT condition, the multipliers and their signs.

Host numpy, float64.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from jax.typing import ArrayLike

from ufm.analysis import gnc


class Certificate(NamedTuple):
    """A polished code and why it is a KKT point of the max-min problem: W (K, d) unit rows, the
    minimum pairwise distance, s the maximum inner product (distance^2 = 2 - 2 s), the active
    pairs (m, 2) with their multipliers mu (m,) (>= 0, summing to 1) and nu (K,), the KKT
    residual (the largest violation of stationarity, the active equalities, the unit norms,
    sum mu = 1, mu >= 0 and feasibility of the other pairs) and the next largest inner product
    of an inactive pair (its gap to s is how clearly the active set is identified)."""

    W: np.ndarray
    distance: float
    s: float
    active: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    kkt_residual: float
    inactive_max: float
    newton_steps: int


class SoftmaxCertificate(NamedTuple):
    """A polished softmax code and why it is a KKT point of the max-min margin problem: W (K, d)
    unit rows; H (K, d) the unit separating directions h_k (class k's face of its QP); the
    margin t = min_{k, j != k} (w_k - w_j).h_k; the active constraints (m, 2) as (k, j) with
    their multipliers mu (>= 0, summing to 1) and nu (2K,: the rows of W, then of H); the KKT
    residual (as in `Certificate`); the smallest gap of an inactive constraint; and the margin
    of the polished W by the exact per-class QPs (`gnc.one_vs_rest_margins`), which equals t
    at a KKT point."""

    W: np.ndarray
    H: np.ndarray
    margin: float
    active: np.ndarray
    mu: np.ndarray
    nu: np.ndarray
    kkt_residual: float
    inactive_min: float
    qp_margin: float
    newton_steps: int


class _Bilinear(NamedTuple):
    """Constraints f_a(X) = sum of c <x_p, x_q> over a's terms, on n unit vectors X (n, d):
    the problem is min s subject to f_a <= s. Terms as flat arrays (constraint, c, p, q)."""

    n: int
    count: int
    con: np.ndarray
    c: np.ndarray
    p: np.ndarray
    q: np.ndarray

    def values(self, X):
        v = np.zeros(self.count)
        np.add.at(v, self.con, self.c * np.einsum("td,td->t", X[self.p], X[self.q]))
        return v

    def gradients(self, X, A, riemannian=True):
        """The (Riemannian) gradients of the constraints A (indices) at X, (m, n, d)."""
        where = np.full(self.count, -1)
        where[A] = np.arange(len(A))
        t = where[self.con] >= 0
        a, c, p, q = where[self.con[t]], self.c[t], self.p[t], self.q[t]
        G = np.zeros((len(A), self.n, X.shape[1]))
        np.add.at(G, (a, p), c[:, None] * X[q])
        np.add.at(G, (a, q), c[:, None] * X[p])
        if riemannian:
            G -= np.einsum("mnd,nd->mn", G, X)[:, :, None] * X[None]
        return G


def _normalize(W):
    return W / np.linalg.norm(W, axis=1, keepdims=True)


def _pairs(K):
    i, j = np.triu_indices(K, 1)
    return np.stack([i, j], axis=1)


def _tammes_problem(K):
    """<w_i, w_j> <= s for every pair i < j."""
    pairs = _pairs(K)
    m = len(pairs)
    return _Bilinear(K, m, np.arange(m), np.ones(m), pairs[:, 0], pairs[:, 1]), pairs


def _softmax_problem(K):
    """(w_j - w_k).h_k <= s for every k and j != k, X = [W; H] (2K, d): s = -t, t the margin."""
    k, j = np.nonzero(~np.eye(K, dtype=bool))
    m = len(k)
    con = np.concatenate([np.arange(m), np.arange(m)])
    c = np.concatenate([np.ones(m), -np.ones(m)])
    p = np.concatenate([j, k])
    q = np.concatenate([K + k, K + k])
    return _Bilinear(2 * K, m, con, c, p, q), np.stack([k, j], axis=1)


def _descend(X, problem, window, iters):
    """Steepest descent of max_a f_a over the constraints within `window` of it (step 1)."""
    for _ in range(iters):
        values = problem.values(X)
        top = values.max()
        near = np.flatnonzero(values >= top - window)
        G = problem.gradients(X, near)
        direction, _ = gnc.min_norm_point(G.reshape(len(near), -1).T)
        norm = np.linalg.norm(direction)
        if norm < 1e-13:
            window /= 4
            if window < 1e-13:
                break
            continue
        step = direction.reshape(X.shape)
        t = window / norm  # a step of the window's size, halved until the max falls
        for _ in range(60):
            trial = _normalize(X - t * step)
            if problem.values(trial).max() < top:
                X = trial
                break
            t /= 2
        else:  # no step of the window's size helps: look closer to the maximum
            window /= 4
            if window < 1e-13:
                break
    return X


def _kkt(X, s, mu, nu, active, problem):
    """The KKT system's residual F (stationarity n d, active equalities m, norms n,
    sum mu - 1) and its Jacobian in (X, s, mu, nu)."""
    n, d = X.shape
    m = len(active)
    size = n * d + 1 + m + n
    F = np.zeros(n * d + m + n + 1)
    J = np.zeros((len(F), size))
    E = problem.gradients(X, active, riemannian=False).reshape(m, n * d)
    F[:n * d] = mu @ E + (2 * nu[:, None] * X).ravel()
    F[n * d:n * d + m] = problem.values(X)[active] - s
    F[n * d + m:n * d + m + n] = np.sum(X * X, axis=1) - 1.0
    F[-1] = mu.sum() - 1.0
    # d stationarity / d X: mu_a c I in the blocks (p, q) and (q, p) of a's terms, 2 nu_p I on
    # the diagonal
    where = np.full(problem.count, -1)
    where[active] = np.arange(m)
    t = where[problem.con] >= 0
    weight = mu[where[problem.con[t]]] * problem.c[t]
    blocks = np.zeros((n, n))
    np.add.at(blocks, (problem.p[t], problem.q[t]), weight)
    np.add.at(blocks, (problem.q[t], problem.p[t]), weight)
    blocks[np.arange(n), np.arange(n)] += 2 * nu
    J[:n * d, :n * d] = np.kron(blocks, np.eye(d))
    J[:n * d, n * d + 1:n * d + 1 + m] = E.T
    nu_columns = np.zeros((n * d, n))
    nu_columns[np.arange(n * d), np.repeat(np.arange(n), d)] = 2 * X.ravel()
    J[:n * d, n * d + 1 + m:] = nu_columns
    J[n * d:n * d + m, :n * d] = E
    J[n * d:n * d + m, n * d] = -1.0
    J[n * d + m:n * d + m + n, :n * d] = nu_columns.T
    J[-1, n * d + 1:n * d + 1 + m] = 1.0
    return F, J


def _multipliers(X, active, problem):
    """mu on the active constraints from the min-norm point of their Riemannian gradients, and
    the nu that make the stationarity exact in the normal directions."""
    G = problem.gradients(X, active)
    _, weights = gnc.min_norm_point(G.reshape(len(active), -1).T)
    E = problem.gradients(X, active, riemannian=False)
    nu = -np.einsum("m,mnd,nd->n", weights, E, X) / 2
    return weights, nu


def _residual(X, s, mu, nu, active, problem):
    F, _ = _kkt(X, s, mu, nu, active, problem)
    return float(max(np.abs(F).max(), max(0.0, -mu.min(initial=0.0)),
                     max(0.0, problem.values(X).max() - s)))


# The first active sets tried after the descent: the constraints within each of these of the
# maximum, the narrowest first (a set too small has no KKT point near X and Newton wanders off
# to a worse one, refused below; one too large loses its extra members by their multipliers).
ACTIVE_TOLS = (1e-9, 1e-7, 1e-5, 1e-3)


def _newton(X, problem, active, *, newton_iters, tol, refresh):
    """Step 2 from X on the active set `active`: (X, s, mu, nu, active, residual, steps) at the
    best point reached, and whether its residual is below tol; None without an active set."""
    values = problem.values(X)
    s = values[active].max()
    mu, nu = _multipliers(X, active, problem)
    n, d = X.shape
    steps = 0
    best = None
    for _ in range(4 * newton_iters):
        for _ in range(newton_iters):
            F, J = _kkt(X, s, mu, nu, active, problem)
            if np.abs(F).max() < tol / 10:
                break
            delta = np.linalg.lstsq(J, -F, rcond=1e-12)[0]
            X = X + delta[:n * d].reshape(n, d)
            s += delta[n * d]
            mu = mu + delta[n * d + 1:n * d + 1 + len(active)]
            nu = nu + delta[n * d + 1 + len(active):]
            steps += 1
        X = refresh(_normalize(X), active)
        values = problem.values(X)
        s = float(np.mean(values[active]))
        rising = values > s + tol
        rising[active] = False
        if mu.min() < -tol and len(active) > 1:  # a constraint that pulls the wrong way leaves
            active = np.delete(active, np.argmin(mu))
            mu, nu = _multipliers(X, active, problem)
            continue
        if rising.any():  # a constraint that rose above s joins
            active = np.concatenate([active, np.flatnonzero(rising)])
            mu, nu = _multipliers(X, active, problem)
            continue
        residual = _residual(X, s, mu, nu, active, problem)
        best = (X, s, mu, nu, active, residual, steps)
        if residual <= tol:
            break
        mu, nu = _multipliers(X, active, problem)  # refresh the dual from the primal and go on
    return best


def _polish(X, problem, *, window, descent_iters, newton_iters, tol, active_tol,
            refresh=lambda X, active: X):
    """Steps 1-3 of the module docstring on a bilinear max-min problem from X. `refresh(X,
    active)` may move the vectors that no active constraint holds (the softmax code's inactive
    directions, reset to their QPs' optima). Newton runs from the descent's end point on the
    constraints within `active_tol` of the maximum, then within each wider ACTIVE_TOLS, until
    it reaches a KKT point to `tol` whose value is not worse than the descent's (a KKT point
    above it is another critical point, not this one's polish). Returns (found, closest):
    found is (X, s, mu, nu, active, residual, steps) or None."""
    X = refresh(_descend(X, problem, window, descent_iters), np.zeros(0, int))
    values = problem.values(X)
    top = values.max()
    closest = None
    for width in sorted({active_tol, *(w for w in ACTIVE_TOLS if w > active_tol)}):
        active = np.flatnonzero(values >= top - width)
        got = _newton(X, problem, active, newton_iters=newton_iters, tol=tol, refresh=refresh)
        if got is None:
            continue
        if got[5] <= tol and got[1] <= top + 1e-10:
            return got, got
        if closest is None or got[5] < closest[5]:
            closest = got
    return None, closest


def _refused(what, K, d, tol, best):
    got = "no active set" if best is None else f"{best[5]:.2e}"
    return ValueError(f"no KKT point of the {what} problem to tol={tol:g} near the given code "
                      f"(K={K}, d={d}; residual {got}): search more first")


def polish_tammes(W: ArrayLike, *, window: float = 1e-3, descent_iters: int = 2000,
                  newton_iters: int = 50, tol: float = 1e-12,
                  active_tol: float = 1e-9) -> Certificate:
    """A KKT point of the Tammes problem near W (K, d), certified (see the module docstring).
    `window`: how far below the maximum a pair counts as near-active in the descent;
    `active_tol`: the pairs within it of the maximum after the descent form the first active
    set. Raises ValueError when no KKT point to `tol` is reached."""
    W = _normalize(np.asarray(W, np.float64))
    K, d = W.shape
    if K < 2:
        raise ValueError(f"a code of K={K} points is not allowed: K >= 2")
    problem, pairs = _tammes_problem(K)
    found, best = _polish(W, problem, window=window, descent_iters=descent_iters,
                          newton_iters=newton_iters, tol=tol, active_tol=active_tol)
    if found is None:
        raise _refused("Tammes", K, d, tol, best)
    W, s, mu, nu, active, residual, steps = found
    values = problem.values(W)
    inactive = np.delete(values, active)
    return Certificate(W, float(np.sqrt(2 - 2 * s)), float(s), pairs[active], mu, nu, residual,
                       float(inactive.max()) if inactive.size else -1.0, steps)


def _separating_directions(W):
    """h_k = (w_k - x_k) / ||w_k - x_k||, x_k the point of conv{w_j : j != k} nearest w_k (the
    exact QP, `gnc.min_norm_point`): the unit direction attaining class k's margin."""
    K = len(W)
    H = np.empty_like(W)
    for k in range(K):
        others = np.delete(np.arange(K), k)
        y, _ = gnc.min_norm_point((W[others] - W[k]).T)  # y = x_k - w_k
        norm = np.linalg.norm(y)
        H[k] = -y / norm if norm > 0 else W[k]
    return H


def polish_softmax(W: ArrayLike, *, window: float = 1e-3, descent_iters: int = 2000,
                   newton_iters: int = 50, tol: float = 1e-12,
                   active_tol: float = 1e-9) -> SoftmaxCertificate:
    """A KKT point of the softmax code's max-min problem near W (K, d), certified.

    The margin dist(w_k, conv{w_j : j != k}) is max over unit h of min_{j != k} (w_k - w_j).h
    (a separating direction; the QP's dual), so maximizing min_k margin_k over unit W is the
    smooth problem max t subject to (w_k - w_j).h_k >= t for every k and j != k over unit W and
    H: bilinear constraints on 2K unit vectors, polished as the Tammes problem is (module
    docstring), its active set the active classes and the faces of their QPs. The directions
    start at their QPs' optima (`_separating_directions`) and those of classes that hold no
    active constraint are reset to them after each Newton round; at a KKT point the active
    classes' directions are their QPs' optima too (stationarity in h_k is the QP's optimality
    condition), so the margin t equals the exact QP margin (`SoftmaxCertificate.qp_margin`).
    Raises ValueError when no KKT point to `tol` is reached."""
    W = _normalize(np.asarray(W, np.float64))
    K, d = W.shape
    if K < 2:
        raise ValueError(f"a code of K={K} points is not allowed: K >= 2")
    problem, pairs = _softmax_problem(K)

    def refresh(X, active):
        held = np.zeros(K, bool)
        held[pairs[active, 0]] = True
        X = X.copy()
        X[K:][~held] = _separating_directions(X[:K])[~held]
        return X

    X = np.concatenate([W, _separating_directions(W)])
    found, best = _polish(X, problem, window=window, descent_iters=descent_iters,
                          newton_iters=newton_iters, tol=tol, active_tol=active_tol,
                          refresh=refresh)
    if found is None:
        raise _refused("softmax code", K, d, tol, best)
    X, s, mu, nu, active, residual, steps = found
    inactive = -np.delete(problem.values(X), active)
    qp = float(np.min(gnc.one_vs_rest_margins(X[:K])))
    return SoftmaxCertificate(X[:K], X[K:], float(-s), pairs[active], mu, nu, residual,
                              float(inactive.min()) if inactive.size else np.inf, qp, steps)
