"""Best-known Tammes codes with their sources: the largest minimum pairwise distance of K unit
vectors in R^d known from the literature, as the cosine s of the minimal angle (the distance
is sqrt(2 - 2 s)). Only values with a source are listed; each entry names it.

Sources:
  exact      a closed form proved optimal: the regular simplex (K = d + 1), the
             cross-polytope and its subsets (d + 2 <= K <= 2d: s = 0, Rankin 1955)
  SvdW1951   K. Schuette, B. L. van der Waerden, "Auf welcher Kugel haben 5, 6, 7, 8 oder 9
             Punkte mit Mindestabstand Eins Platz?", Math. Ann. 123 (1951)
  Danzer     L. Danzer, "Finite point-sets on S^2 with minimum distance as large as
             possible", Discrete Math. 60 (1986) (Habilitationsschrift 1963): K = 10, 11
  FT1943     L. Fejes Toth (1943): K = 12, the icosahedron
  MT2015     O. R. Musin, A. S. Tarasov, "The Tammes problem for N = 14", Exp. Math. 24
             (2015); the angle 0.971634742886224075941694947628 rad (OEIS A383860)
  Cohn       H. Cohn, "Table of spherical codes", https://cohn.mit.edu/spherical-codes (the
             data set https://hdl.handle.net/1721.1/142661), its cosines rounded up, with
             their minimal polynomials
  MT2012     O. R. Musin, A. S. Tarasov, "The strong thirteen spheres problem", Discrete
             Comput. Geom. 48 (2012): K = 13 proved, the angle 57.1367 degrees
  R1961      R. M. Robinson, "Arrangement of 24 points on a sphere", Math. Ann. 144 (1961):
             K = 24 proved, the snub cube (its cosine from the construction,
             `ufm.analysis.constructions.snub_cube`)
  Sloane     N. J. A. Sloane with R. H. Hardin, W. D. Smith and others, "Tables of spherical
             codes" (http://neilsloane.com/packings/): the minimal angles in degrees to 4
             decimals, not proved optimal

An entry given only as an angle to a number of decimals carries that precision as `tolerance`
(a whole unit of its last decimal, as a chordal distance: tables round or truncate); the
others are exact to round-off.
"""
from __future__ import annotations

import math
from typing import NamedTuple


class BestKnown(NamedTuple):
    """A best-known Tammes value: the cosine s of the minimal angle, whether it is proved
    optimal, its source (see the module docstring) and the precision of the source's value as
    a chordal distance (0: exact to round-off)."""

    s: float
    proved: bool
    source: str
    tolerance: float = 0.0

    @classmethod
    def from_angle(cls, degrees: float, decimals: int, proved: bool,
                   source: str) -> "BestKnown":
        """An entry quoted as a minimal angle in degrees to `decimals` decimals (the distance
        2 sin(theta / 2) moves by cos(theta / 2) per radian of theta; a unit of the last
        decimal either way)."""
        theta = math.radians(degrees)
        unit = math.radians(10.0 ** -decimals)
        return cls(math.cos(theta), proved, source, math.cos(theta / 2) * unit)

    @property
    def distance(self) -> float:
        """The minimum pairwise (chordal) distance sqrt(2 - 2 s)."""
        return math.sqrt(2 - 2 * self.s)


TAMMES = {
    # The regular simplex, and d + 2 <= K <= 2d: subsets of the cross-polytope (Rankin 1955)
    **{(d, d + 1): BestKnown(-1 / d, True, "exact (regular simplex)") for d in range(2, 9)},
    **{(d, K): BestKnown(0.0, True, "exact (Rankin 1955)") for d in range(3, 9)
       for K in range(d + 2, 2 * d + 1)},
    # 3x^3 - 9x^2 - 3x + 1 (Cohn); SvdW1951
    (3, 7): BestKnown(0.21013831273060308, True, "SvdW1951; Cohn"),
    # 7x^2 + 2x - 1: the square antiprism, s = (sqrt 8 - 1) / 7
    (3, 8): BestKnown((math.sqrt(8) - 1) / 7, True, "SvdW1951; Cohn"),
    (3, 9): BestKnown(1 / 3, True, "SvdW1951; Cohn"),
    (3, 10): BestKnown(0.40439432521625076, True, "Danzer; Cohn (OEIS A340918)"),
    (3, 11): BestKnown(1 / math.sqrt(5), True, "Danzer (the icosahedron less a point)"),
    (3, 12): BestKnown(1 / math.sqrt(5), True, "FT1943 (the icosahedron)"),
    (3, 13): BestKnown.from_angle(57.1367, 4, True, "MT2012"),
    (3, 14): BestKnown(math.cos(0.97163474288622408), True, "MT2015 (OEIS A383860)"),
    (3, 24): BestKnown(0.7230784683335086, True, "R1961 (the snub cube)"),
    **{(3, K): BestKnown.from_angle(angle, 4, False, "Sloane") for K, angle in {
        15: 53.6579, 16: 52.2444, 17: 51.0903, 18: 49.5567, 19: 47.6919, 20: 47.4310,
        21: 45.6132, 22: 44.7402, 23: 43.7100, 25: 41.6344, 26: 41.0377, 27: 40.6776,
        28: 39.3551, 29: 38.7137, 30: 38.5971}.items()},
}
