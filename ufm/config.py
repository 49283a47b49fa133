"""TOML experiment files -> validated `Experiment` objects, with every default written out.

An experiment file has four tables (all optional; every key has a default):

    name = "my-experiment"
    [problem]   Problem fields: num_classes, feature_dim, n_per_class | class_counts |
                multiplicity_counts, loss, geometry, bias, classifier, dtype, depth,
                activation
    [hyper]     Hyper fields: lam_W, lam_H, lam_b, tau, alpha, gamma, kappa, M, lr, momentum,
                beta1, beta2
    [solver]    name ("gd" | "momentum" | "nesterov" | "adam" | "lbfgs"), steps, log_every, tol,
                init_scale, fast (the first-order solvers' fast path, see `ufm.solve`),
                check_every (steps between its convergence / divergence checks), kernel
                ("xla" | "pallas": plain GD's one-pass Pallas kernel, see `ufm.kernels`)
    [run]       seeds (a list of ints), batch (configurations per vmapped slice; 0 = auto),
                chunk (configurations per compiled call and checkpoint; 0 = auto, from memory)
    [[zip]]     fields (problem, hyper, or "solver") whose lists advance together
    kind = "solve" (default) or a landscape experiment: "benign", "origin_phase",
                "saddle_escape", configured by a [landscape] table (see LANDSCAPE_DEFAULTS)

A list in [problem] or [hyper] (or solver.name) is a grid axis; a number field may also be
{linspace = [start, stop, num]} or {logspace = [start, stop, num]} (end values, geometric
spacing). The grid is the Cartesian product of the axes, the [[zip]] tables and the seeds
(class_counts is a list of per-class counts; a list of such lists is an axis;
multiplicity_counts = [n_1, n_2, ...] makes multi-label data, n_m samples on every set of m
classes, see `ufm.problem.multilabel_sets`; a list of such lists is an axis).
Everything is checked here, before anything compiles: an unknown key, a wrong type or an
out-of-range value raises `ConfigError` naming the key, the value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from ufm.problem import HYPER_RANGES, Hyper, Problem, describe_range
from ufm.kernels import KERNELS
from ufm.solvers import CHECK_EVERY, SOLVERS

DEFAULT_PATH = Path(__file__).with_name("default.toml")


class ConfigError(ValueError):
    """A bad experiment file or override; the message names the key, the value and the rule."""


PROBLEM_DEFAULTS = {
    "num_classes": 10, "feature_dim": 32, "n_per_class": 50, "class_counts": None, "loss": "ce",
    "geometry": "wd", "bias": None, "classifier": "learned", "dtype": "float32",
    "multiplicity_counts": None, "depth": 1, "activation": "linear",
}
PROBLEM_TYPES = {
    "num_classes": int, "feature_dim": int, "n_per_class": int, "class_counts": list,
    "loss": str, "geometry": str, "bias": bool, "classifier": str, "dtype": str,
    "multiplicity_counts": list, "depth": int, "activation": str,
}
# Problem fields whose value is a list (so a list of lists is an axis).
LIST_FIELDS = ("class_counts", "multiplicity_counts")
HYPER_DEFAULTS = dict(Hyper()._asdict())
SOLVER_DEFAULTS = {"name": "gd", "steps": 10_000, "log_every": 100, "tol": None, "init_scale": 1.0,
                   "fast": True, "check_every": CHECK_EVERY, "kernel": "xla"}
SOLVER_TYPES = {"name": str, "steps": int, "log_every": int, "tol": float, "init_scale": float,
                "fast": bool, "check_every": int, "kernel": str}
# batch: configurations per vmapped slice; chunk: per compiled call and checkpoint; 0 = auto
RUN_DEFAULTS = {"seeds": [0], "batch": 0, "chunk": 0}
# kind = "solve" runs the grid; the landscape kinds run `ufm.landscape` experiments on every
# configuration of the grid, with the [landscape] table's settings.
KINDS = ("solve", "benign", "origin_phase", "saddle_escape")
LANDSCAPE_DEFAULTS = {
    "random_starts": 200,  # benign: random starts per configuration
    "saddle_starts": 10,  # benign: starts near each constructed saddle
    "epsilon": [1e-3],  # distance of starts from a saddle (benign: the first; escape: each)
    "ranks": [],  # rank-r saddles to build; empty: every r < min(K-1, d)
    "reach_rtol": 1e-6,  # benign: a start reached f* when |f - f*| <= reach_rtol |f*|
    "ratios": [0.5, 0.8, 0.9, 0.95, 1.05, 1.1, 1.25, 1.5, 2.0],  # origin_phase
    "saddle": "origin",  # saddle_escape: "origin", "rank r" or "collapsed"
    "drop": 1e-2,  # saddle_escape: escaped when f < f(saddle) - drop |f(saddle)|
    "method": "auto",  # probe: "auto", "dense" or "lanczos"
}
LANDSCAPE_TYPES = {"random_starts": int, "saddle_starts": int, "epsilon": float, "ranks": int,
                   "reach_rtol": float, "ratios": float, "saddle": str, "drop": float,
                   "method": str}
LIST_KEYS = ("epsilon", "ranks", "ratios")
SECTIONS = ("problem", "hyper", "solver", "run", "landscape")
TOP_LEVEL = ("name", "description", "kind", "zip") + SECTIONS


@dataclasses.dataclass
class Experiment:
    """A resolved experiment: every key present, values checked."""

    name: str
    description: str
    problem: dict  # Problem fields; a list value is a grid axis
    hyper: dict  # Hyper fields; a list value is a grid axis
    solver: dict
    run: dict
    kind: str = "solve"
    landscape: dict = dataclasses.field(default_factory=lambda: dict(LANDSCAPE_DEFAULTS))
    zips: list = dataclasses.field(default_factory=list)  # [[zip]] tables: field -> list

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "kind": self.kind,
                "problem": self.problem, "hyper": self.hyper, "solver": self.solver,
                "run": self.run, "landscape": self.landscape, "zip": self.zips}


@dataclasses.dataclass(frozen=True)
class Configuration:
    """One point of the grid: a Problem, scalar Hyper, seed, and the axis values that vary."""

    problem: Problem
    hyper: Hyper
    seed: int
    axes: tuple  # ((field, value), ...) of the grid axes, for labels and tables
    solver: str = "gd"


def _type_name(t) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false",
            list: "a list of integers"}[t]


def _check_type(where: str, value, expected) -> Any:
    if expected is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}={value!r} is not allowed: {_type_name(float)}")
        return float(value)
    if expected is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}={value!r} is not allowed: {_type_name(int)}")
        return value
    if expected is list:
        if not (isinstance(value, list) and all(isinstance(v, int) and not isinstance(v, bool)
                                                for v in value)):
            raise ConfigError(f"{where}={value!r} is not allowed: {_type_name(list)}")
        return value
    if not isinstance(value, expected):
        raise ConfigError(f"{where}={value!r} is not allowed: {_type_name(expected)}")
    return value


def _unknown(where: str, key: str, allowed) -> ConfigError:
    return ConfigError(f"unknown key {where}{key!r}: allowed keys are {', '.join(allowed)}")


def _axis_values(field: str, value) -> list:
    """The values of a field: a list is an axis (class_counts: a list of lists)."""
    if field in LIST_FIELDS:
        if isinstance(value, list) and value and all(isinstance(v, list) for v in value):
            return value
        return [value]
    return value if isinstance(value, list) else [value]


SPACINGS = ("linspace", "logspace")


def _spaced(where: str, value) -> list:
    """{linspace = [start, stop, num]} or {logspace = [start, stop, num]} as a list of floats;
    logspace takes the end values themselves (geometric spacing), not their exponents."""
    if len(value) != 1 or next(iter(value)) not in SPACINGS:
        raise ConfigError(f"{where}={value!r} is not allowed: a value, a list, "
                          "{linspace = [start, stop, num]} or {logspace = [start, stop, num]}")
    (kind, spec), = value.items()
    if not (isinstance(spec, list) and len(spec) == 3 and isinstance(spec[2], int)
            and not isinstance(spec[2], bool) and spec[2] >= 1
            and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in spec[:2])):
        raise ConfigError(f"{where}.{kind}={spec!r} is not allowed: [start, stop, num] with an "
                          "integer num >= 1")
    start, stop, num = float(spec[0]), float(spec[1]), spec[2]
    if kind == "logspace":
        if not (start > 0 and stop > 0):
            raise ConfigError(f"{where}.logspace={spec!r} is not allowed: start and stop > 0")
        return [float(v) for v in np.geomspace(start, stop, num)]
    return [float(v) for v in np.linspace(start, stop, num)]


def _resolve_section(section: str, given: dict, defaults: dict, types: dict) -> dict:
    if not isinstance(given, dict):
        raise ConfigError(f"[{section}] must be a table, got {given!r}")
    resolved = dict(defaults)
    for key, value in given.items():
        if key not in defaults:
            raise _unknown(f"{section}.", key, defaults)
        if isinstance(value, dict):
            if types[key] is not float:
                raise ConfigError(f"{section}.{key}={value!r} is not allowed: "
                                  f"{_type_name(types[key])} or a list of them")
            value = _spaced(f"{section}.{key}", value)
        values = _axis_values(key, value)
        if not values:
            raise ConfigError(f"{section}.{key}=[] is not allowed: a value or a non-empty list")
        checked = [None if v is None else _check_type(f"{section}.{key}", v, types[key])
                   for v in values]
        is_axis = len(values) != 1 or (isinstance(value, list) and key not in LIST_FIELDS)
        resolved[key] = checked if is_axis else checked[0]
    return resolved


def _check_hyper_ranges(hyper: dict) -> None:
    for key, value in hyper.items():
        lo, lo_ok, hi, hi_ok = HYPER_RANGES[key]
        for v in _axis_values(key, value):
            ok = math.isfinite(v) and (v >= lo if lo_ok else v > lo) and (v <= hi if hi_ok else v < hi)
            if not ok:
                raise ConfigError(f"hyper.{key}={v!r} is not allowed: "
                                  f"{describe_range(lo, lo_ok, hi, hi_ok)}")


def _resolve_zips(given, raw: dict) -> list[dict]:
    """[[zip]] tables: every field listed in one table advances together (equal lengths)."""
    if isinstance(given, dict):
        given = [given]
    if not isinstance(given, list) or not all(isinstance(t, dict) for t in given):
        raise ConfigError(f"zip={given!r} is not allowed: [[zip]] tables of field = [values]")
    zips, seen = [], set()
    for table in given:
        resolved = {}
        for key, value in table.items():
            if key == "solver":  # the solver name may advance with its learning rate
                if key in seen or isinstance(raw.get("solver", {}).get("name"), list):
                    raise ConfigError("zip.solver is not allowed: solver.name is already a list")
                names = value if isinstance(value, list) else [value]
                _check_solver(dict(SOLVER_DEFAULTS) | {"name": names})
                seen.add(key)
                resolved[key] = list(names)
                continue
            section = ("problem" if key in PROBLEM_DEFAULTS else
                       "hyper" if key in HYPER_DEFAULTS else None)
            if section is None:
                raise _unknown("zip.", key,
                               list(PROBLEM_DEFAULTS) + list(HYPER_DEFAULTS) + ["solver"])
            if key in seen or key in raw.get(section, {}):
                raise ConfigError(f"zip.{key} is not allowed: {key} is already set elsewhere "
                                  "(in its section or another [[zip]])")
            seen.add(key)
            defaults = PROBLEM_DEFAULTS if section == "problem" else HYPER_DEFAULTS
            types = PROBLEM_TYPES if section == "problem" else {k: float for k in HYPER_DEFAULTS}
            checked = _resolve_section(section, {key: value}, defaults, types)[key]
            if not isinstance(checked, list) or (key in LIST_FIELDS and
                                                 not isinstance(checked[0], list)):
                raise ConfigError(f"zip.{key}={value!r} is not allowed: a list of values")
            if section == "hyper":
                _check_hyper_ranges({key: checked})
            resolved[key] = checked
        lengths = {k: len(v) for k, v in resolved.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError(f"zip lists must have equal lengths, got {lengths}")
        if resolved:
            zips.append(resolved)
    return zips


def _check_solver(solver: dict) -> None:
    for name in _axis_values("name", solver["name"]):
        if name not in SOLVERS:
            raise ConfigError(f"solver.name={name!r} is not allowed: one of {list(SOLVERS)}")
    for key in ("fast", "check_every", "kernel", "steps", "log_every", "tol", "init_scale"):
        if isinstance(solver[key], list):
            raise ConfigError(f"solver.{key}={solver[key]!r} is not allowed: one value (only "
                              "solver.name may be a grid axis)")
    for key in ("steps", "log_every", "check_every"):
        if solver[key] < 1:
            raise ConfigError(f"solver.{key}={solver[key]!r} is not allowed: an integer >= 1")
    if solver["kernel"] not in KERNELS:
        raise ConfigError(f"solver.kernel={solver['kernel']!r} is not allowed: one of "
                          f"{list(KERNELS)}")
    if solver["tol"] is not None and not solver["tol"] >= 0:
        raise ConfigError(f"solver.tol={solver['tol']!r} is not allowed: a number >= 0")
    if not solver["init_scale"] > 0:
        raise ConfigError(f"solver.init_scale={solver['init_scale']!r} is not allowed: a number > 0")


def resolve(raw: dict) -> Experiment:
    """Check a parsed experiment file and fill in every default."""
    if raw.get("kind") == "net":
        raise ConfigError('kind = "net" is a network experiment: read it with '
                          "ufm.nets.experiment.load (ufm run picks it up by itself)")
    for key in raw:
        if key not in TOP_LEVEL:
            raise _unknown("", key, TOP_LEVEL)
    name = _check_type("name", raw.get("name", "experiment"), str)
    description = _check_type("description", raw.get("description", ""), str)
    problem = _resolve_section("problem", raw.get("problem", {}), PROBLEM_DEFAULTS, PROBLEM_TYPES)
    given = raw.get("problem", {})
    if any(k in given for k in LIST_FIELDS) and "n_per_class" not in given:
        problem["n_per_class"] = None
    hyper = _resolve_section("hyper", raw.get("hyper", {}), HYPER_DEFAULTS,
                             {k: float for k in HYPER_DEFAULTS})
    solver = _resolve_section("solver", raw.get("solver", {}), SOLVER_DEFAULTS, SOLVER_TYPES)
    zips = _resolve_zips(raw.get("zip", []), raw)
    run = dict(RUN_DEFAULTS)
    for key, value in _check_type("[run]", raw.get("run", {}), dict).items():
        if key not in RUN_DEFAULTS:
            raise _unknown("run.", key, RUN_DEFAULTS)
        if key in ("batch", "chunk"):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"run.{key}={value!r} is not allowed: an integer >= 0 "
                                  "(0 chooses from the problem size and the device)")
            run[key] = value
            continue
        seeds = value if isinstance(value, list) else [value]
        if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                for s in seeds):
            raise ConfigError(f"run.seeds={value!r} is not allowed: a non-empty list of "
                              "integers >= 0")
        run["seeds"] = seeds
    _check_hyper_ranges(hyper)
    _check_solver(solver)
    kind = _check_type("kind", raw.get("kind", "solve"), str)
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not allowed: one of {list(KINDS)}")
    landscape = _resolve_landscape(_check_type("[landscape]", raw.get("landscape", {}), dict))
    experiment = Experiment(name, description, problem, hyper, solver, run, kind, landscape,
                            zips)
    configurations(experiment)  # builds every Problem: its errors surface here, not mid-run
    return experiment


def _resolve_landscape(given: dict) -> dict:
    resolved = {k: (list(v) if isinstance(v, list) else v) for k, v in LANDSCAPE_DEFAULTS.items()}
    for key, value in given.items():
        if key not in LANDSCAPE_DEFAULTS:
            raise _unknown("landscape.", key, LANDSCAPE_DEFAULTS)
        where = f"landscape.{key}"
        if key in LIST_KEYS:
            values = value if isinstance(value, list) else [value]
            resolved[key] = [_check_type(where, v, LANDSCAPE_TYPES[key]) for v in values]
        else:
            resolved[key] = _check_type(where, value, LANDSCAPE_TYPES[key])
    for key in ("random_starts", "saddle_starts"):
        if resolved[key] < 0:
            raise ConfigError(f"landscape.{key}={resolved[key]!r} is not allowed: an integer >= 0")
    for key in ("epsilon", "ratios"):
        bad = [v for v in resolved[key] if not v > 0]
        if bad or not resolved[key]:
            raise ConfigError(f"landscape.{key}={resolved[key]!r} is not allowed: a non-empty "
                              "list of numbers > 0")
    if any(r < 1 for r in resolved["ranks"]):
        raise ConfigError(f"landscape.ranks={resolved['ranks']!r} is not allowed: integers >= 1")
    for key in ("reach_rtol", "drop"):
        if not resolved[key] > 0:
            raise ConfigError(f"landscape.{key}={resolved[key]!r} is not allowed: a number > 0")
    if resolved["method"] not in ("auto", "dense", "lanczos"):
        raise ConfigError(f"landscape.method={resolved['method']!r} is not allowed: one of "
                          "['auto', 'dense', 'lanczos']")
    saddle = resolved["saddle"]
    if not (saddle in ("origin", "collapsed") or (saddle.startswith("rank ") and
                                                  saddle[5:].isdigit() and int(saddle[5:]) >= 1)):
        raise ConfigError(f"landscape.saddle={saddle!r} is not allowed: 'origin', 'collapsed' "
                          "or 'rank r' with an integer r >= 1")
    return resolved


def read_toml(path) -> dict:
    """A parsed experiment file (any kind); ConfigError when missing or not TOML."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"experiment file {str(path)!r} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML: {err}") from None


def load(path) -> Experiment:
    """Read and resolve an experiment file."""
    return resolve(read_toml(path))


def load_default() -> Experiment:
    return load(DEFAULT_PATH)


def apply_overrides(experiment: Experiment, overrides: list[str]) -> Experiment:
    """Apply `--set key=value` overrides ("section.key" or a key unique to one section; values
    in TOML syntax, bare words as strings) and re-validate."""
    raw = experiment.to_dict()
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not allowed: write key=value")
        key, text = (s.strip() for s in item.split("=", 1))
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        if "." in key:
            section, field = key.split(".", 1)
        elif key in ("name", "description", "kind"):
            raw[key] = value
            continue
        else:
            owners = [s for s in SECTIONS if key in raw[s]]
            if len(owners) != 1:
                raise ConfigError(f"--set {key!r}: unknown key; use section.key with section in "
                                  f"{list(SECTIONS)}")
            section, field = owners[0], key
        if section not in SECTIONS:
            raise _unknown("", section, SECTIONS)
        raw[section][field] = value
    return resolve(raw)


def _problem_kwargs(problem_values: dict) -> dict:
    kwargs = dict(problem_values)
    if kwargs.get("class_counts") is not None:
        kwargs["class_counts"] = tuple(kwargs["class_counts"])
        kwargs["n_per_class"] = None
    multiplicity = kwargs.pop("multiplicity_counts", None)
    if multiplicity is not None:
        from ufm.problem import multilabel_sets

        kwargs["label_sets"], kwargs["set_counts"] = multilabel_sets(kwargs["num_classes"],
                                                                     multiplicity)
        kwargs["n_per_class"] = None
    return kwargs


def configurations(experiment: Experiment) -> list[Configuration]:
    """Expand the grid: the Cartesian product of every list axis, every [[zip]] (its fields
    advance together) and the solver names, then the seeds (innermost)."""
    zipped = {k for table in experiment.zips for k in table}
    fields = [("problem", k, _axis_values(k, v)) for k, v in experiment.problem.items()
              if k not in zipped]
    fields += [("hyper", k, _axis_values(k, v)) for k, v in experiment.hyper.items()
               if k not in zipped]
    if "solver" not in zipped:
        fields += [("solver", "solver", _axis_values("name", experiment.solver["name"]))]
    for table in experiment.zips:
        length = len(next(iter(table.values())))
        fields.append(("zip", tuple(table), [tuple(table[k][i] for k in table)
                                             for i in range(length)]))
    varying = {k for _, k, values in fields if len(values) > 1}
    configs = []
    for combo in itertools.product(*(values for _, _, values in fields)):
        chosen = {}
        for (section, key, _), value in zip(fields, combo):
            if section == "zip":
                chosen.update(zip(key, value))
            else:
                chosen[key] = value
        problem_kwargs = {k: chosen[k] for k in PROBLEM_DEFAULTS}
        hyper_kwargs = {k: chosen[k] for k in HYPER_DEFAULTS}
        try:
            problem = Problem(**_problem_kwargs(problem_kwargs))
        except ValueError as err:
            raise ConfigError(f"problem.{err}") from None
        axis_values = []
        for section, key, _ in fields:
            if key in varying:
                keys = key if section == "zip" else (key,)
                axis_values += [(k, chosen[k]) for k in keys]
        for seed in experiment.run["seeds"]:
            configs.append(Configuration(problem, Hyper(**hyper_kwargs), seed,
                                         tuple(axis_values), chosen["solver"]))
    return configs


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else
                                                         ("inf" if value > 0 else "-inf"))
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def dumps(experiment: Experiment) -> str:
    """The experiment as TOML with every key written out (None values, meaning 'the default
    rule', are written as comments)."""
    lines = [f"name = {_toml_value(experiment.name)}",
             f"description = {_toml_value(experiment.description)}",
             f"kind = {_toml_value(experiment.kind)}"]
    for table in experiment.zips:
        lines += ["", "[[zip]]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for section in SECTIONS:
        if section == "landscape" and experiment.kind == "solve":
            continue  # only landscape experiments read it
        lines += ["", f"[{section}]"]
        zipped = {k for table in experiment.zips for k in table}
        for key, value in getattr(experiment, section).items():
            if (section in ("problem", "hyper") and key in zipped) or (
                    section == "solver" and key == "name" and "solver" in zipped):
                lines.append(f"# {key}: see [[zip]]")
            elif value is None:
                lines.append(f"# {key} is unset (its default rule applies)")
            else:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
