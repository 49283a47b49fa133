"""Known spherical configurations, as starting points for the code searches: the regular
simplex, the cross-polytope, antiprisms, the icosahedron and the snub cube in R^3, the 24-cell
in R^4 and the half-cube in R^5, each as unit rows (N, d). Several are optimal Tammes codes
(the simplex, the octahedron, the square antiprism at 8, the icosahedron at 12 and less a point
at 11, the snub cube at 24, Robinson 1961); the others start a search in or near the right
basin. `starts(K, d)` gives every construction of K points in R^d, and the subsets of K points
of the larger ones (the best code for K is at least as good as any K of a code with more).

Host numpy, float64.
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def _unit(P) -> np.ndarray:
    P = np.asarray(P, np.float64)
    return P / np.linalg.norm(P, axis=1, keepdims=True)


def simplex(d: int) -> np.ndarray:
    """The regular simplex of d + 1 points in R^d (inner products -1/d): the centred standard
    basis of R^{d+1}, written in an orthonormal basis of the hyperplane sum x = 0."""
    E = np.eye(d + 1) - 1.0 / (d + 1)
    basis = np.linalg.svd(E)[2][:d]  # the hyperplane's orthonormal basis (rows)
    return _unit(E @ basis.T)


def cross_polytope(d: int) -> np.ndarray:
    """The 2d points +-e_i of R^d (inner products 0 and -1)."""
    return np.concatenate([np.eye(d), -np.eye(d)])


def antiprism(n: int) -> np.ndarray:
    """The n-gonal antiprism in R^3: two rings of n points at heights +-h, turned pi/n against
    each other, h chosen so that every edge has the ring's length (2n points)."""
    angles = 2 * np.pi * np.arange(n) / n
    chord = 2 * math.sin(math.pi / n)  # the ring's edge on a circle of radius r, over r
    # lateral edge^2 = 2 r^2 (1 - cos(pi/n)) + (2h)^2 equals the ring's (chord r)^2, r^2 + h^2 = 1
    lateral = 2 * (1 - math.cos(math.pi / n))
    r2 = 1 / (1 + max(chord**2 - lateral, 1e-6) / 4)
    r, h = math.sqrt(r2), math.sqrt(max(1 - r2, 0.0))
    top = np.stack([r * np.cos(angles), r * np.sin(angles), np.full(n, h)], axis=1)
    bottom = np.stack([r * np.cos(angles + np.pi / n), r * np.sin(angles + np.pi / n),
                       np.full(n, -h)], axis=1)
    return _unit(np.concatenate([top, bottom]))


def icosahedron() -> np.ndarray:
    """The 12 vertices (0, +-1, +-phi) and their cyclic permutations (inner products
    +-1/sqrt 5 and -1)."""
    phi = (1 + math.sqrt(5)) / 2
    rows = [(0.0, a, b * phi) for a in (1, -1) for b in (1, -1)]
    return _unit([p[k:] + p[:k] for p in rows for k in range(3)])


def snub_cube() -> np.ndarray:
    """The snub cube's 24 vertices: the even permutations of (+-1, +-1/t, +-t) with an even
    number of plus signs and the odd permutations with an odd number, t the tribonacci
    constant (t^3 = t^2 + t + 1); Robinson (1961) proved it the best 24-point code in R^3."""
    t = 1.8392867552141612
    base = (1.0, 1 / t, t)
    out = []
    for perm in itertools.permutations(range(3)):
        # the parity of a permutation of three: even iff it is a rotation of (0, 1, 2)
        even = perm in ((0, 1, 2), (1, 2, 0), (2, 0, 1))
        for signs in itertools.product((1, -1), repeat=3):
            plus = sum(s > 0 for s in signs)
            if (plus % 2 == 0) == even:
                out.append([signs[i] * base[perm[i]] for i in range(3)])
    return _unit(out)


def cell24() -> np.ndarray:
    """The 24-cell's 24 vertices in R^4: the permutations of (+-1, +-1, 0, 0) (inner products
    0, +-1/2 and -1)."""
    out = set()
    for i, j in itertools.combinations(range(4), 2):
        for a, b in itertools.product((1, -1), repeat=2):
            v = [0, 0, 0, 0]
            v[i], v[j] = a, b
            out.add(tuple(v))
    return _unit(sorted(out))


def half_cube(d: int = 5) -> np.ndarray:
    """The 2^{d-1} points (+-1, ..., +-1) of R^d with an even number of minus signs (inner
    products (d - 4j)/d); for d = 5, 16 points at cosine 1/5."""
    return _unit([s for s in itertools.product((1, -1), repeat=d)
                  if sum(x < 0 for x in s) % 2 == 0])


def _all(d: int) -> list[np.ndarray]:
    found = [simplex(d), cross_polytope(d)]
    if d == 3:
        found += [antiprism(n) for n in range(3, 16)] + [icosahedron(), snub_cube()]
    if d == 4:
        found.append(cell24())
    if d == 5:
        found.append(half_cube(5))
    return found


def starts(K: int, d: int, *, subsets: int = 2, seed: int = 0) -> np.ndarray:
    """Starting configurations of K points in R^d, (m, K, d): every construction of exactly K
    points, and from each larger one `subsets` subsets of K points (its first K rows, then
    random ones). Empty (0, K, d) when none applies."""
    rng = np.random.default_rng(seed)
    out = []
    for P in _all(d):
        if len(P) == K:
            out.append(P)
        elif len(P) > K:
            out.append(P[:K])
            out += [P[np.sort(rng.choice(len(P), K, replace=False))] for _ in range(subsets - 1)]
    return np.stack(out) if out else np.zeros((0, K, d))
