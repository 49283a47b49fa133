"""UFM problems: the static `Problem`, the traced `Hyper`, `Params`, labels, init, objective.

The weight-decay UFM (Zhu et al. 2021, "A geometric analysis of neural collapse with
unconstrained features"):

    f(W, H, b) = (1/N) sum_i L(z_i / tau, y_i) + lam_W/2 ||W||_F^2 + lam_H/2 ||H||_F^2
                 + lam_b/2 ||b||^2,        Z = W H + b 1^T

the sphere-constrained UFM (Yaras et al. 2022): rows of W and columns of H on the unit
sphere, no penalty on W or H, logits divided by the temperature tau; and the norm-constrained
UFM (E & Wojtowytsch 2020; Fang et al. 2021, the layer-peeled model): no penalty on W or H,

    (1/K) ||W||_F^2 <= E_W   and   (1/N) ||H||_F^2 <= E_H        (geometry "norm_ball")
    (1/K) ||W||_F^2 <= E_W   and   ||h_i||^2 <= E_H for every i   (geometry "norm_ball_each")

solved by projected first-order methods (`ufm.model.manifolds`).

Conventions: W is (K, d) with row w_k the classifier of class k, H is (d, N) with column h_i
the feature of sample i, b is (K,). Samples are ordered by class: the first n_0 columns of H
belong to class 0, the next n_1 to class 1, and so on (`Problem.labels`).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import os
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import DTypeLike

from ufm.model import losses as _losses
from ufm.model import streaming as _streaming
from ufm.model.frames import simplex_etf

GEOMETRIES = ("wd", "sphere", "norm_ball", "norm_ball_each")
# Geometries whose W and H are held by constraints (no weight decay on them).
BALL_GEOMETRIES = ("norm_ball", "norm_ball_each")
ACTIVATIONS = ("linear", "relu")
CLASSIFIERS = ("learned", "fixed_etf", "identity")
DTYPES = ("float32", "float64")
# Losses defined for multi-hot targets: CE on a multi-hot Y is pick-all-label.
MULTILABEL_LOSSES = ("ce", "pick_all_label", "mse")


def x64_scope(dtype: DTypeLike | str) -> contextlib.AbstractContextManager:
    """A context in which `dtype` is computable: float64 switches x64 on just for its body, so a
    float64 problem never needs the user to touch JAX's global flags. Matmuls inside run at
    full precision: on recent NVIDIA GPUs JAX's default float32 matmul is TF32 (10-bit
    mantissa, ~1e-3 relative), which would put a floor far above float32's gaps to f*."""
    stack = contextlib.ExitStack()
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        stack.enter_context(jax.enable_x64(True))
    stack.enter_context(jax.default_matmul_precision("highest"))
    return stack


# Index arithmetic and labels are int32: N, K d and d N stay below 2^31.
INDEX_LIMIT = 2**31 - 1
# Each layer of a deep UFM is its own matmul in the compiled program (compile time grows with
# depth: 1000 layers gave no output in 90 s); the deep-UFM papers use L <= 10.
MAX_DEPTH = 64
# `UFM_MEMORY_LIMIT` (bytes, e.g. 64e9, or "none") replaces the machine's available memory as
# the bound on one configuration's estimated working set.
MEMORY_LIMIT_VARIABLE = "UFM_MEMORY_LIMIT"


def available_memory() -> float | None:
    """Bytes a run may allocate: $UFM_MEMORY_LIMIT if set ("none": no bound), else the
    machine's available memory (MemAvailable, or free pages), or None where unknown."""
    given = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if given is not None:
        if given.strip().lower() == "none":
            return None
        try:
            return float(given)
        except ValueError:
            raise ValueError(f"{MEMORY_LIMIT_VARIABLE}={given!r} is not allowed: a number of "
                             "bytes (e.g. 64e9) or none") from None
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def working_set_bytes(K: int, d: int, N: int, depth: int, itemsize: int, streamed: bool) -> int:
    """An estimate of one configuration's peak memory while it runs: 8 copies of its variables
    (H d x N, W K x d, b K, the deep layers d x d) and the logits' temporaries, 4 K x N arrays
    (logits, softmax, dL/dZ, the records' NC4 scores), or, streamed over class blocks
    (`ufm.model.streaming`), 3 blocks of block_size x N; plus the int32 labels.

    Measured (XLA's buffer sizes of the compiled chunk and records at one log point, and the
    peak RSS of `ufm.solve`): a chunk holds its input state, its output state and the logged
    point, and about 4 copies of temporaries (gradient, update, moments); the records hold the
    point and the state, and 5-7 copies (centred features, class statistics). The largest of
    the two, over the variables: 7-9 at (10, 500, 10^4), 8.5 at (10^7, 6, 5 streamed, whose
    blocks of 8 x 5 10^7 logits are 1.1 x the variables); peak RSS 6.5 at (10, 500, 10^5) and
    14.5 at (2 10^6, 6, 5) with 3 logged points."""
    variables = d * N + K * d + K + (depth - 1) * d * d
    if streamed:
        logits = 3 * _streaming.block_size(K, N) * N
    else:
        logits = 4 * K * N
    return itemsize * (8 * variables + logits) + 4 * N  # + the int32 labels


def check_memory(need: float, what: str, fix: str) -> None:
    """Refuse `need` bytes above `available_memory` with one line naming `what` needs it, the
    estimate, the limit and `fix` (how to need less)."""
    limit = available_memory()
    if limit is not None and need > limit:
        raise ValueError(
            f"size: {what} needs about {need / 2**30:.3g} GiB and {limit / 2**30:.3g} GiB is "
            f"available; {fix}, or set {MEMORY_LIMIT_VARIABLE} (bytes, or none) if you know "
            "better")


def _fail(field: str, value, allowed: str) -> None:
    raise ValueError(f"{field}={value!r} is not allowed: {allowed}")


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class Problem:
    """Everything about a UFM that changes shapes or code paths (a static, hashable argument).

    Attributes:
      num_classes: K >= 2.
      feature_dim: d >= 1 (d >= K-1 for the simplex-ETF regime, smaller for generalized NC).
      n_per_class: samples per class for balanced data; or give `class_counts` instead.
      class_counts: per-class sample counts (n_0, ..., n_{K-1}) for imbalanced data.
      loss: one of `ufm.model.losses.LOSSES` ("ce", "ls", "focal", "mse", "mse_rescaled").
      geometry: "wd" (weight decay), "sphere" (unit-norm w_k and h_i, temperature tau),
        "norm_ball" (mean squared norms of the w_k and of the h_i at most Hyper.E_W and E_H:
        the layer-peeled model) or "norm_ball_each" (the same bound on W, and every
        ||h_i||^2 <= E_H).
      bias: learn a bias b; defaults to True for "wd" and False for the other geometries.
      classifier: "learned", "fixed_etf" (W frozen at the unit-norm simplex ETF) or "identity"
        (W frozen at I, d = K: the logits are the features. On the sphere with one sample per
        class this is Lu & Steinerberger's model, "Neural collapse under cross-entropy loss",
        2022, whose optimum is the simplex ETF).
      dtype: "float32" or "float64"; a float64 problem runs in float64 without global flags.
      label_sets, set_counts: multi-label data (Li et al. 2024) instead of class counts: each
        sample carries a set of classes (a sorted tuple), set_counts[s] samples carry
        label_sets[s]; the targets are multi-hot and CE on them is the pick-all-label loss
        sum_{k in S} CE(z, k). `multilabel_sets(K, counts_by_size)` builds every set of each
        size. Samples are ordered by label set (`Problem.sample_sets`).
      depth: L >= 1 weight matrices from the free features to the logits (the deep UFM of
        Tirer & Bruna 2022, Dang et al. 2023, Sukenik et al. 2024): Z = W s(A_{L-1} ...
        s(A_1 H)) + b 1^T with d x d hidden layers A_l (`Params.layers`), every one penalized
        by lam_W/2 ||A_l||^2 like W. depth = 1 is the UFM. Weight-decay geometry only.
      activation: s between the layers: "linear" (deep linear UFM) or "relu".
    """

    num_classes: int
    feature_dim: int
    n_per_class: int | None = None
    class_counts: tuple[int, ...] | None = None
    loss: str = "ce"
    geometry: str = "wd"
    bias: bool | None = None
    classifier: str = "learned"
    dtype: str = "float32"
    label_sets: tuple[tuple[int, ...], ...] | None = None
    set_counts: tuple[int, ...] | None = None
    depth: int = 1
    activation: str = "linear"

    def __post_init__(self):
        K, d = self.num_classes, self.feature_dim
        if not _is_int(K) or K < 2:
            _fail("num_classes", K, "an integer >= 2")
        if not _is_int(d) or d < 1:
            _fail("feature_dim", d, "an integer >= 1")
        for field, value in (("num_classes", K), ("feature_dim", d)):
            if value > INDEX_LIMIT:
                _fail(field, value, f"at most {INDEX_LIMIT} (2^31 - 1: indices are int32)")
        if self.label_sets is not None or self.set_counts is not None:
            self._check_label_sets()
        elif self.class_counts is None:
            n = 1 if self.n_per_class is None else self.n_per_class
            if not _is_int(n) or n < 1:
                _fail("n_per_class", n, "an integer >= 1")
            if n * K > INDEX_LIMIT:
                _fail("n_per_class", n, f"at most {INDEX_LIMIT // K} with num_classes={K}: "
                      f"N = {n * K:.3g} samples exceed the int32 labels' 2^31 - 1")
            object.__setattr__(self, "n_per_class", int(n))
            object.__setattr__(self, "class_counts", (int(n),) * K)
        else:
            counts = tuple(self.class_counts)
            if len(counts) != K:
                _fail("class_counts", self.class_counts, f"a list of num_classes={K} integers")
            if not all(_is_int(c) and c >= 1 for c in counts):
                _fail("class_counts", self.class_counts, "integers >= 1")
            counts = tuple(int(c) for c in counts)
            if self.n_per_class is not None and counts != (self.n_per_class,) * K:
                _fail("n_per_class", self.n_per_class, "omitted when class_counts is given")
            balanced = len(set(counts)) == 1
            object.__setattr__(self, "class_counts", counts)
            object.__setattr__(self, "n_per_class", counts[0] if balanced else None)
        if self.loss not in _losses.LOSSES:
            _fail("loss", self.loss, f"one of {sorted(_losses.LOSSES)}")
        if self.multilabel and self.loss not in MULTILABEL_LOSSES:
            _fail("loss", self.loss, f"one of {list(MULTILABEL_LOSSES)} with label_sets "
                  "(losses defined for multi-hot targets)")
        if self.geometry not in GEOMETRIES:
            _fail("geometry", self.geometry, f"one of {list(GEOMETRIES)}")
        if self.bias is None:
            object.__setattr__(self, "bias", self.geometry == "wd")
        if not isinstance(self.bias, (bool, np.bool_)):
            _fail("bias", self.bias, "true or false")
        object.__setattr__(self, "bias", bool(self.bias))
        if self.classifier not in CLASSIFIERS:
            _fail("classifier", self.classifier, f"one of {list(CLASSIFIERS)}")
        if self.classifier == "fixed_etf" and d < K - 1:
            _fail("feature_dim", d, f"at least num_classes-1={K - 1} with classifier='fixed_etf'")
        if self.classifier == "identity" and d != K:
            _fail("feature_dim", d, f"num_classes={K} with classifier='identity' (W = I)")
        if self.dtype not in DTYPES:
            _fail("dtype", self.dtype, f"one of {list(DTYPES)}")
        if not _is_int(self.depth) or self.depth < 1:
            _fail("depth", self.depth, "an integer >= 1 (1 is the UFM)")
        object.__setattr__(self, "depth", int(self.depth))
        if self.activation not in ACTIVATIONS:
            _fail("activation", self.activation, f"one of {list(ACTIVATIONS)}")
        if self.depth == 1:  # no hidden layer, nothing to activate: one Problem, one compile
            object.__setattr__(self, "activation", "linear")
        if self.depth > 1 and self.geometry != "wd":
            _fail("depth", self.depth, f"1 with geometry={self.geometry!r} (the deep UFM is a "
                  "weight-decay model)")
        if self.depth > MAX_DEPTH:
            _fail("depth", self.depth, f"an integer from 1 to {MAX_DEPTH} (each layer is "
                  "compiled on its own)")
        self._check_size()

    def working_set(self) -> int:
        """Estimated peak bytes of one configuration while it runs (`working_set_bytes`)."""
        return working_set_bytes(self.num_classes, self.feature_dim, self.num_samples,
                                 self.depth, np.dtype(self.dtype).itemsize, streams(self))

    def _check_size(self) -> None:
        """Refuse sizes the int32 indices cannot hold, and a working set (`working_set_bytes`)
        above the available memory (`available_memory`), before anything is allocated."""
        K, d, N = self.num_classes, self.feature_dim, self.num_samples
        for what, value in (("num_samples N", N), ("num_classes x feature_dim", K * d),
                            ("feature_dim x num_samples", d * N)):
            if value > INDEX_LIMIT:
                raise ValueError(f"size: {what} = {value:.3g} is not allowed: at most "
                                 f"{INDEX_LIMIT} (2^31 - 1; indices and labels are int32) "
                                 f"(num_classes={K}, feature_dim={d}, N={N})")
        check_memory(self.working_set(), f"one configuration (num_classes={K}, "
                     f"feature_dim={d}, N={N}, {self.dtype})", "make it smaller")

    def _check_label_sets(self) -> None:
        K = self.num_classes
        if self.n_per_class is not None or self.class_counts is not None:
            _fail("class_counts" if self.class_counts is not None else "n_per_class",
                  self.class_counts if self.class_counts is not None else self.n_per_class,
                  "omitted when label_sets is given")
        if self.label_sets is None or self.set_counts is None:
            _fail("label_sets" if self.label_sets is None else "set_counts", None,
                  "label_sets and set_counts are given together")
        sets = []
        for label_set in self.label_sets:
            members = tuple(label_set) if isinstance(label_set, (tuple, list)) else (label_set,)
            if (not members or not all(_is_int(k) and 0 <= k < K for k in members)
                    or len(set(members)) != len(members)):
                _fail("label_sets", self.label_sets,
                      f"non-empty sets of distinct classes in 0..{K - 1}")
            sets.append(tuple(sorted(int(k) for k in members)))
        if len(set(sets)) != len(sets):
            _fail("label_sets", self.label_sets, "distinct sets")
        counts = tuple(self.set_counts)
        if len(counts) != len(sets) or not all(_is_int(c) and c >= 1 for c in counts):
            _fail("set_counts", self.set_counts,
                  f"{len(sets)} integers >= 1 (one per label set)")
        singles = {s[0] for s in sets if len(s) == 1}
        if singles != set(range(K)):
            _fail("label_sets", self.label_sets, "a single-label set (k,) for every class k "
                  "(the class means the multi-label geometry is measured against)")
        object.__setattr__(self, "label_sets", tuple(sets))
        object.__setattr__(self, "set_counts", tuple(int(c) for c in counts))

    @property
    def multilabel(self) -> bool:
        return self.label_sets is not None

    @property
    def num_samples(self) -> int:
        """N = sum_k n_k (or the sum of set_counts)."""
        return sum(self.set_counts if self.multilabel else self.class_counts)

    @property
    def balanced(self) -> bool:
        return self.n_per_class is not None

    @property
    def labels(self) -> np.ndarray:
        """Class of each column of H, class-sorted: [0]*n_0 + [1]*n_1 + ... (int32, (N,)).
        Multi-label problems have label sets instead (`sample_sets`, `targets`)."""
        if self.multilabel:
            raise ValueError("a multi-label problem has label sets, not one label per sample: "
                             "use Problem.sample_sets / Problem.targets()")
        return np.repeat(np.arange(self.num_classes, dtype=np.int32), self.class_counts)

    @property
    def sample_sets(self) -> np.ndarray:
        """Index of each sample's label set (into label_sets), set-sorted (int32, (N,)); the
        class itself for single-label problems."""
        if not self.multilabel:
            return self.labels
        return np.repeat(np.arange(len(self.label_sets), dtype=np.int32), self.set_counts)

    def single_label_equivalent(self) -> "Problem | None":
        """For multi-label data whose sets are all single labels: the same problem with class
        counts (pick-all-label is CE there); None when some sample carries several labels."""
        if not self.multilabel or any(len(s) != 1 for s in self.label_sets):
            return None
        counts = [0] * self.num_classes
        for (k,), c in zip(self.label_sets, self.set_counts):
            counts[k] = c
        loss = "ce" if self.loss == "pick_all_label" else self.loss
        return dataclasses.replace(self, label_sets=None, set_counts=None,
                                   class_counts=tuple(counts), loss=loss)

    @property
    def jnp_dtype(self) -> type:
        return jnp.float64 if self.dtype == "float64" else jnp.float32

    def x64_scope(self) -> contextlib.AbstractContextManager:
        """Context that makes this problem's dtype available (see `x64_scope`)."""
        return x64_scope(self.dtype)

    def targets(self) -> jax.Array:
        """Targets Y (K, N) in the problem's dtype: one-hot, or multi-hot for label sets."""
        if self.multilabel:
            multi_hot = np.zeros((self.num_classes, len(self.label_sets)))
            for s, label_set in enumerate(self.label_sets):
                multi_hot[list(label_set), s] = 1.0
            return jnp.asarray(multi_hot[:, self.sample_sets], self.jnp_dtype)
        return jax.nn.one_hot(self.labels, self.num_classes, dtype=self.jnp_dtype).T


def multilabel_sets(num_classes: int, counts_by_size: Sequence[int]) -> tuple[tuple, tuple]:
    """(label_sets, set_counts) with every set of m classes carrying counts_by_size[m-1]
    samples (m = 1, 2, ...; a zero count leaves that size out): Li et al. 2024's data,
    balanced within each multiplicity."""
    counts_by_size = list(counts_by_size)
    if not counts_by_size or not all(_is_int(c) and c >= 0 for c in counts_by_size) \
            or not _is_int(counts_by_size[0]) or counts_by_size[0] < 1 \
            or len(counts_by_size) > num_classes:
        _fail("multiplicity_counts", counts_by_size,
              f"a list of at most num_classes={num_classes} integers >= 0, the first >= 1 "
              "(samples per label set of size 1, 2, ...)")
    sets, counts = [], []
    for size, count in enumerate(counts_by_size, start=1):
        if count:
            for combo in itertools.combinations(range(num_classes), size):
                sets.append(combo)
                counts.append(int(count))
    return tuple(sets), tuple(counts)


class _HyperFields(NamedTuple):
    lam_W: float = 5e-4
    lam_H: float = 5e-4
    # No bias penalty by default (the built-in run, grid files and Python alike): b* = 0 for
    # CE, focal and label smoothing either way, and MSE keeps its closed form (b* = 1/K) only
    # with an unpenalized bias.
    lam_b: float = 0.0
    tau: float = 1.0
    alpha: float = 0.1
    gamma: float = 2.0
    kappa: float = 1.0
    M: float = 1.0
    lr: float = 0.5
    momentum: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    E_W: float = 1.0
    E_H: float = 1.0


class Hyper(_HyperFields):
    """Traced hyperparameters; every field may carry a batch axis for vmap.

    lam_W, lam_H, lam_b: weight decays (ignored for W and H on the sphere and the norm balls;
    lam_b defaults to 0, an unpenalized bias). tau: temperature, logits are divided by tau.
    alpha: label smoothing.  gamma: focal.  kappa, M: rescaled-MSE scale and target
    magnitude.  lr, momentum, beta1, beta2: solver.  E_W, E_H: the norm balls' bounds
    (geometries "norm_ball", "norm_ball_each"; ignored by the others): (1/K) ||W||_F^2 <= E_W,
    and (1/N) ||H||_F^2 <= E_H or every ||h_i||^2 <= E_H. A field given as text is refused
    (`Hyper(lam_H="1e-3")`): numbers, arrays or tracers only.
    """

    __slots__ = ()

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls, *args, **kwargs)
        for name, value in zip(cls._fields, self):
            if isinstance(value, (str, bytes)) or (
                    isinstance(value, np.ndarray) and value.dtype.kind in "USO"):
                raise TypeError(f"Hyper.{name}={value!r} is not allowed: a number (or an "
                                f"array of numbers), not text; e.g. {name}="
                                f"{getattr(_HyperFields(), name)!r}")
        return self

    def astype(self, dtype: DTypeLike | str) -> "Hyper":
        """Every field as an array of `dtype` (keeps batch axes)."""
        return Hyper(*(jnp.asarray(v, dtype=dtype) for v in self))

    def broadcast(self, batch: int, dtype: DTypeLike | str) -> "Hyper":
        """Every field as a (batch,) array of `dtype`: scalars repeat, batch axes are kept."""
        return Hyper(*(jnp.broadcast_to(jnp.asarray(v, dtype=dtype), (batch,)) for v in self))


# What each Hyper field allows: (lowest, lowest is allowed, highest, highest is allowed).
HYPER_RANGES = {
    "lam_W": (0.0, True, math.inf, False),
    "lam_H": (0.0, True, math.inf, False),
    "lam_b": (0.0, True, math.inf, False),
    "tau": (0.0, False, math.inf, False),
    "alpha": (0.0, True, 1.0, False),
    "gamma": (0.0, True, math.inf, False),
    "kappa": (0.0, False, math.inf, False),
    "M": (0.0, False, math.inf, False),
    "lr": (0.0, False, math.inf, False),
    "momentum": (0.0, True, 1.0, False),
    "beta1": (0.0, True, 1.0, False),
    "beta2": (0.0, True, 1.0, False),
    "E_W": (0.0, False, math.inf, False),
    "E_H": (0.0, False, math.inf, False),
}


def describe_range(lo: float | None, lo_ok: bool, hi: float | None, hi_ok: bool) -> str:
    left = f">= {lo:g}" if lo_ok else f"> {lo:g}"
    if math.isinf(hi):
        return f"a number {left}"
    right = f"<= {hi:g}" if hi_ok else f"< {hi:g}"
    return f"a number {left} and {right}"


def validate_hyper(hyper: Hyper) -> None:
    """Raise a ValueError naming the field, the value and the allowed range (host-side)."""
    if not isinstance(hyper, Hyper):
        raise TypeError(f"hyper must be a ufm.Hyper, got {type(hyper).__name__}")
    for name, value in zip(Hyper._fields, hyper):
        if isinstance(value, jax.core.Tracer):
            continue  # traced values are checked where they enter, before tracing
        arr = np.asarray(value, dtype=np.float64)
        lo, lo_ok, hi, hi_ok = HYPER_RANGES[name]
        ok = np.isfinite(arr) & ((arr >= lo) if lo_ok else (arr > lo))
        ok &= (arr <= hi) if hi_ok else (arr < hi)
        if not np.all(ok):
            bad = arr[~ok].ravel()[0] if arr.ndim else float(arr)
            _fail(name, float(bad), describe_range(lo, lo_ok, hi, hi_ok))


def unused_hyper_fields(problem: Problem, solver: str = "gd") -> dict[str, str]:
    """The Hyper fields that do not enter this problem's objective or this solver's steps, each
    with the reason (written beside them in a results folder's config.toml)."""
    unused = {}
    if problem.geometry != "wd":
        unused.update(lam_W=f"no penalty on W on the {problem.geometry} geometry",
                      lam_H=f"no penalty on H on the {problem.geometry} geometry")
    elif problem.classifier != "learned" and problem.depth == 1:
        unused["lam_W"] = f"the {problem.classifier} classifier is not trained"
    if not problem.bias:
        unused["lam_b"] = "no bias"
    if problem.loss not in ("ls", "ls_off_target"):
        unused["alpha"] = "label smoothing only"
    if problem.loss != "focal":
        unused["gamma"] = "focal loss only"
    if problem.loss != "mse_rescaled":
        unused.update(kappa="rescaled MSE only", M="rescaled MSE only")
    if solver == "lbfgs":
        unused["lr"] = "L-BFGS takes its step from a line search"
    if solver not in ("momentum", "nesterov"):
        unused["momentum"] = "momentum and nesterov only"
    if solver != "adam":
        unused.update(beta1="adam only", beta2="adam only")
    if problem.geometry not in BALL_GEOMETRIES:
        unused.update(E_W="norm-ball geometries only", E_H="norm-ball geometries only")
    return unused


class _ParamsFields(NamedTuple):
    W: jax.Array  # (K, d) classifier, row k = w_k
    H: jax.Array  # (d, N) features, column i = h_i
    b: jax.Array  # (K,) bias (held at zero when Problem.bias is False)
    layers: jax.Array | None = None  # (L-1, d, d) hidden layers A_1..A_{L-1} of a deep UFM


class Params(_ParamsFields):
    """UFM variables W (K, d), H (d, N), b (K,) and a deep UFM's hidden layers (L-1, d, d).

    As a Python sequence it holds the variables the problem has: (W, H, b) at depth 1,
    (W, H, b, layers) for a deep UFM. Unpacking, `len`, indexing and `tuple(params)` agree
    (`W, H, b = params`; `W, H, b, layers = params`). As a pytree it always has the four fields
    (layers None at depth 1): jax flattens a NamedTuple by its slots, not by this protocol, so
    `jax.tree.map` and `vmap` see one structure for every depth."""

    __slots__ = ()

    def _present(self) -> tuple:
        """The variables that exist (the slots, less an absent `layers`)."""
        return tuple.__getitem__(self, slice(0, 3 if self.layers is None else 4))

    def __iter__(self):
        return iter(self._present())

    def __len__(self) -> int:
        return 3 if self.layers is None else 4

    def __getitem__(self, index):
        return self._present()[index]

    def _replace(self, **changes):
        fields = {f: tuple.__getattribute__(self, f) for f in self._fields}
        unknown = set(changes) - set(fields)
        if unknown:
            raise ValueError(f"Params has no field {sorted(unknown)[0]!r}")
        return Params(**{**fields, **changes})

    def _asdict(self):
        return {f: tuple.__getattribute__(self, f) for f in self._fields}


def normalize_rows(W: jax.Array) -> jax.Array:
    return W / jnp.linalg.norm(W, axis=1, keepdims=True)


def normalize_columns(H: jax.Array) -> jax.Array:
    return H / jnp.linalg.norm(H, axis=0, keepdims=True)


def init(problem: Problem, key: jax.Array, scale: float = 1.0) -> Params:
    """Random start: entries N(0, scale^2/d), so rows of W and columns of H have norm ~scale.

    On the sphere rows of W and columns of H are normalized; a fixed-ETF classifier starts (and
    stays) at the unit-norm simplex ETF; b starts at zero. Drawn in the problem's dtype, so a
    float64 problem gets the same start here as inside `ufm.solve`.
    """
    if isinstance(key, int):
        key = jax.random.key(key)
    with problem.x64_scope():
        return init_traced(problem, key, scale)


def init_traced(problem: Problem, key: jax.Array, scale: float = 1.0) -> Params:
    """`init` for use inside jit/vmap, where the caller has already set the precision."""
    K, d, N = problem.num_classes, problem.feature_dim, problem.num_samples
    dtype = problem.jnp_dtype
    key_W, key_H = jax.random.split(key)
    std = scale / math.sqrt(d)
    W = std * jax.random.normal(key_W, (K, d), dtype)
    H = std * jax.random.normal(key_H, (d, N), dtype)
    if problem.geometry == "sphere":
        W, H = normalize_rows(W), normalize_columns(H)
    if problem.classifier == "fixed_etf":
        W = jnp.asarray(simplex_etf(K, d), dtype)
    if problem.classifier == "identity":
        W = jnp.eye(K, dtype=dtype)
    layers = None
    if problem.depth > 1:
        keys = jax.random.split(jax.random.fold_in(key, 1), problem.depth - 1)
        layers = jnp.stack([std * jax.random.normal(k, (d, d), dtype) for k in keys])
    return Params(W, H, jnp.zeros((K,), dtype), layers)


def representations(problem: Problem, params: Params) -> list[jax.Array]:
    """[H, s(A_1 H), s(A_2 s(A_1 H)), ...]: the features at every depth, the last one the
    classifier's input (one entry, H, for the UFM)."""
    reps = [params.H]
    for layer in range(problem.depth - 1):
        X = params.layers[layer] @ reps[-1]
        reps.append(jax.nn.relu(X) if problem.activation == "relu" else X)
    return reps


def logits(params: Params, problem: Problem | None = None) -> jax.Array:
    """Z = W H + b 1^T, shape (K, N); through the hidden layers for a deep problem."""
    features = params.H if problem is None or problem.depth == 1 else representations(
        problem, params)[-1]
    return params.W @ features + params.b[:, None]


def streams(problem: Problem) -> bool:
    """Whether `mean_loss` streams the logits over class blocks (`ufm.model.streaming`): a softmax
    loss (CE, LS, focal) with single labels, depth 1, and K N above `STREAM_ABOVE`."""
    return (problem.loss in _streaming.STREAMED_LOSSES and not problem.multilabel
            and problem.depth == 1
            and problem.num_classes * problem.num_samples > _streaming.STREAM_ABOVE)


def mean_loss(problem: Problem, hyper: Hyper, params: Params) -> jax.Array:
    """(1/N) sum_i L(z_i / tau, y_i); streamed over class blocks when the K x N logits are
    large (`streams`)."""
    if streams(problem):
        size = _streaming.block_size(problem.num_classes, problem.num_samples)
        return jnp.mean(_streaming.per_sample_loss(
            problem.loss, params.W, params.H, params.b, jnp.asarray(problem.labels), hyper,
            size))
    Z = logits(params, problem) / hyper.tau
    return jnp.mean(_losses.LOSSES[problem.loss](Z, problem.targets(), hyper))


def penalty(problem: Problem, hyper: Hyper, params: Params) -> jax.Array:
    """lam_W/2 ||W||^2 + lam_H/2 ||H||^2 + lam_b/2 ||b||^2 (weight decay); only the bias term
    on the sphere and the norm balls, where constraints hold the norms of W and H."""
    bias_term = 0.5 * hyper.lam_b * jnp.sum(params.b**2)
    if problem.geometry != "wd":
        return bias_term
    weights = jnp.sum(params.W**2)
    if problem.depth > 1:
        weights = weights + jnp.sum(params.layers**2)
    return 0.5 * hyper.lam_W * weights + 0.5 * hyper.lam_H * jnp.sum(params.H**2) + bias_term


def logit_gradient(problem: Problem, hyper: Hyper, params: Params) -> jax.Array:
    """G = d/dZ of the mean loss (1/N) sum_i L(z_i / tau, y_i), shape (K, N).

    At a critical point of the weight-decay UFM, G H^T = -lam_W W and W^T G = -lam_H H; its top
    singular value decides the landscape facts of docs/science.md, section 5."""
    Y = problem.targets()
    return jax.grad(lambda Z: jnp.mean(_losses.LOSSES[problem.loss](Z / hyper.tau, Y, hyper)))(
        logits(params, problem))


def objective(problem: Problem, hyper: Hyper, params: Params) -> jax.Array:
    """f(W, H, b) = mean loss + penalties (docs/science.md, section 1)."""
    return mean_loss(problem, hyper, params) + penalty(problem, hyper, params)
