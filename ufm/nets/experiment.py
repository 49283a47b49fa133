"""Network experiments from TOML (`kind = "net"`), run by `ufm run FILE` into a results folder.

    kind = "net"
    name = "net_losses"
    [data]   name ("digits" | "mnist" | "cifar10" | "gaussian"), path, variant ("none" |
             "random_labels" | "random_inputs"), n_train (per class; 0 = all), image (bool),
             gaussian_dim, separation
    [model]  name ("mlp" | "resnet"), width, depth (MLP), blocks (ResNet), feature_dim (0 = the
             body's width), head ("learned" | "etf" | "cmf"), bias, normalize, batchnorm (MLP)
    [train]  loss, optimizer, lr, momentum, schedule, epochs, batch_size, eval_every,
             weight_decay, lam_W, lam_H, lam_b, tau, alpha, gamma, kappa, M, cmf_momentum,
             layer_samples, checkpoint_every
    [run]    seeds (list)
    [[zip]]  "section.key" = [...] lists of one length that advance together (e.g. a loss with
             its learning rate)

Any value may be a list: a grid axis (the Cartesian product is trained one configuration after
another). Every finished configuration is saved at once (checkpoints/config-NNNNN.json); an
interrupted one resumes from its training checkpoint; a folder holding another experiment is
refused. Bad keys and values stop with a message naming them before anything trains.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import time
from pathlib import Path

import numpy as np

from ufm import io
from ufm.config import ConfigError

SECTIONS = {
    "data": {"name": "digits", "path": "", "variant": "none", "n_train": 0, "image": False,
             "gaussian_dim": 32, "separation": 3.0},
    "model": {"name": "mlp", "width": 128, "depth": 3, "blocks": 2, "feature_dim": 0,
              "head": "learned", "bias": True, "normalize": False, "batchnorm": False},
    "train": {"loss": "ce", "optimizer": "momentum", "lr": 0.1, "momentum": 0.9,
              "schedule": "cosine", "epochs": 300, "batch_size": 128, "eval_every": 25,
              "weight_decay": 2e-3, "lam_W": 2e-3, "lam_H": 1e-4, "lam_b": 2e-3, "tau": 1.0,
              "alpha": 0.1, "gamma": 2.0, "kappa": 1.0, "M": 1.0, "cmf_momentum": 0.9,
              "layer_samples": 1000, "checkpoint_every": 25},
}
HYPER_KEYS = ("lam_W", "lam_H", "lam_b", "tau", "alpha", "gamma", "kappa", "M")
CHOICES = {("data", "name"): ("digits", "mnist", "cifar10", "gaussian"),
           ("data", "variant"): ("none", "random_labels", "random_inputs"),
           ("model", "name"): ("mlp", "resnet"), ("model", "head"): ("learned", "etf", "cmf")}


@dataclasses.dataclass
class NetExperiment:
    name: str
    description: str
    sections: dict  # section -> key -> value or list of values (an axis)
    seeds: list
    zips: list = dataclasses.field(default_factory=list)  # [{"section.key": [values]}]

    def dumps(self) -> str:
        lines = ['kind = "net"', f"name = {json.dumps(self.name)}",
                 f"description = {json.dumps(self.description)}"]
        for section, values in self.sections.items():
            lines.append(f"\n[{section}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("\n[run]")
        lines.append(f"seeds = {_toml_value(self.seeds)}")
        for table in self.zips:
            lines.append("\n[[zip]]")
            lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
        return "\n".join(lines) + "\n"


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, str):
        return json.dumps(v)
    return repr(v)


def is_net_file(raw: dict) -> bool:
    return raw.get("kind") == "net"


def _check(section, key, value):
    default = SECTIONS[section][key]
    values = value if isinstance(value, list) else [value]
    if isinstance(value, list) and not value:
        raise ConfigError(f"{section}.{key}=[] is not allowed: a value or a non-empty list")
    for v in values:
        if isinstance(default, bool):
            ok = isinstance(v, bool)
            kind = "true or false"
        elif isinstance(default, int):
            ok = isinstance(v, int) and not isinstance(v, bool) and v >= 0
            kind = "an integer >= 0"
        elif isinstance(default, float):
            ok = isinstance(v, (int, float)) and not isinstance(v, bool)
            kind = "a number"
        else:
            ok = isinstance(v, str)
            kind = "a string"
        if not ok:
            raise ConfigError(f"{section}.{key}={v!r} is not allowed: {kind}")
        options = CHOICES.get((section, key))
        if options and v not in options:
            raise ConfigError(f"{section}.{key}={v!r} is not allowed: one of {list(options)}")
    return value


def resolve(raw: dict) -> NetExperiment:
    """Validate a parsed net experiment file; every default written out."""
    known = {"kind", "name", "description", "run", "zip", *SECTIONS}
    for key in raw:
        if key not in known:
            raise ConfigError(f"{key!r} is not allowed in a net experiment: one of {sorted(known)}")
    sections = {}
    for section, defaults in SECTIONS.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table, got {given!r}")
        for key in given:
            if key not in defaults:
                raise ConfigError(f"{section}.{key} is not allowed: one of {sorted(defaults)}")
        sections[section] = {k: _check(section, k, given.get(k, d)) for k, d in defaults.items()}
    run = raw.get("run", {})
    for key in run:
        if key != "seeds":
            raise ConfigError(f"run.{key} is not allowed in a net experiment: one of ['seeds']")
    seeds = run.get("seeds", [0])
    seeds = seeds if isinstance(seeds, list) else [seeds]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                            for s in seeds):
        raise ConfigError(f"run.seeds={seeds!r} is not allowed: a non-empty list of integers >= 0")
    name = raw.get("name", "net")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"name={name!r} is not allowed: a non-empty string")
    zips = []
    for table in raw.get("zip", []):
        lengths = set()
        for key, values in table.items():
            section, _, field = key.partition(".")
            if section not in SECTIONS or field not in SECTIONS[section]:
                raise ConfigError(f"zip key {key!r} is not allowed: section.key with a key of "
                                  f"{sorted(SECTIONS)}")
            if not isinstance(values, list) or not values:
                raise ConfigError(f"zip {key}={values!r} is not allowed: a non-empty list")
            _check(section, field, values)
            if isinstance(sections[section][field], list):
                raise ConfigError(f"{key} is both a list in [{section}] and in a [[zip]]")
            lengths.add(len(values))
        if len(lengths) > 1:
            raise ConfigError(f"zip lists must have one length, got {sorted(lengths)}")
        zips.append(dict(table))
    experiment = NetExperiment(name, str(raw.get("description", "")), sections, seeds, zips)
    for cfg in configurations(experiment):  # settings that only fail in combination
        _settings(cfg).check()
    return experiment


def load(path) -> NetExperiment:
    """Read and resolve a network experiment file."""
    from ufm.config import read_toml

    raw = read_toml(path)
    if not is_net_file(raw):
        raise ConfigError(f'{path} is not a network experiment (kind = "net" is missing)')
    return resolve(raw)


def apply_overrides(experiment: NetExperiment, overrides) -> NetExperiment:
    """`--set section.key=value` (TOML value syntax)."""
    import tomllib

    raw = {"kind": "net", "name": experiment.name, "description": experiment.description,
           "run": {"seeds": list(experiment.seeds)}, "zip": [dict(t) for t in experiment.zips],
           **{s: dict(v) for s, v in experiment.sections.items()}}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} is not allowed: KEY=VALUE")
        key, text = item.split("=", 1)
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        parts = key.strip().split(".")
        if len(parts) != 2 or parts[0] not in (*SECTIONS, "run"):
            raise ConfigError(f"--set {key!r} is not allowed: section.key with section one of "
                              f"{[*SECTIONS, 'run']}")
        raw.setdefault(parts[0], {})[parts[1]] = value
    return resolve(raw)


def configurations(experiment: NetExperiment) -> list[dict]:
    """Every configuration (flat dict "section.key" -> value, plus "seed"), axes in file order."""
    flat = {f"{s}.{k}": v for s, values in experiment.sections.items() for k, v in values.items()}
    axes = [[{k: x} for x in v] for k, v in flat.items() if isinstance(v, list)]
    axes += [[dict(zip(table, values)) for values in zip(*table.values())]
             for table in experiment.zips]
    out = []
    for combo in itertools.product(*axes, experiment.seeds):
        cfg = dict(flat)
        for part in combo[:-1]:
            cfg.update(part)
        cfg["seed"] = combo[-1]
        out.append(cfg)
    return out


def _settings(cfg):
    from ufm.nets.train import TrainSettings
    from ufm.problem import Hyper

    t = {k.split(".", 1)[1]: v for k, v in cfg.items() if k.startswith("train.")}
    hyper = Hyper(**{k: float(t.pop(k)) for k in HYPER_KEYS})
    return TrainSettings(hyper=hyper, seed=cfg["seed"], **{k: (float(v) if k in (
        "lr", "momentum", "weight_decay", "cmf_momentum") else v) for k, v in t.items()})


def _dataset(cfg):
    from ufm.nets import data as _data

    name = cfg["data.name"]
    kwargs = dict(variant=cfg["data.variant"], seed=cfg["seed"],
                  n_train=cfg["data.n_train"] or None)
    if name == "gaussian":
        shape = (32, 32, 3) if cfg["model.name"] == "resnet" else (cfg["data.gaussian_dim"],)
        return _data.load(name, shape=shape, separation=cfg["data.separation"], **kwargs)
    image = cfg["data.image"] or cfg["model.name"] == "resnet"
    return _data.load(name, path=cfg["data.path"] or None, image=image, **kwargs)


def _model(cfg, data):
    from ufm.nets import models

    options = dict(feature_dim=cfg["model.feature_dim"] or None, head=cfg["model.head"],
                   bias=cfg["model.bias"], normalize=cfg["model.normalize"],
                   width=cfg["model.width"])
    if cfg["model.name"] == "mlp":
        options.update(depth=cfg["model.depth"], batchnorm=cfg["model.batchnorm"])
    else:
        options.update(blocks=cfg["model.blocks"])
    return models.build(cfg["model.name"], input_shape=data.input_shape,
                        num_classes=data.num_classes, seed=cfg["seed"], **options)


def run(experiment: NetExperiment, out=None, progress=None):
    """Train every configuration; with `out`, write (and resume) the results folder."""
    from ufm.grid import GridResult, _claim_folder
    from ufm.nets.train import train

    config_text = experiment.dumps()
    out = None if out is None else Path(out)
    if out is not None:
        _claim_folder(out, config_text)
    configs = configurations(experiment)
    t0 = time.perf_counter()
    rows, histories = [], []
    for index, cfg in enumerate(configs):
        done = None if out is None else out / "checkpoints" / f"config-{index:05d}.json"
        if done is not None and done.is_file():
            saved = json.loads(done.read_text())
            rows.append(saved["row"])
            histories.append({k: np.asarray(v, float) for k, v in saved["history"].items()})
            continue
        data = _dataset(cfg)
        model = _model(cfg, data)
        folder = None if out is None else out / "checkpoints" / f"config-{index:05d}"
        result = train(model, data, _settings(cfg), out=folder, progress=progress,
                       model_description=json.dumps({k: v for k, v in cfg.items()
                                                     if not k.startswith("train.")},
                                                    sort_keys=True))
        history = {k: v for k, v in result.history.items() if k != "layer_nc1"}
        for j, column in enumerate(np.asarray(result.history["layer_nc1"]).T):
            history[f"layer_nc1_{j}"] = column
        row = {"row": index, **cfg}  # configuration columns keep their "section." prefix
        row.update({k: float(v[-1]) for k, v in history.items() if k != "iteration"})
        row["epochs_run"] = int(history["iteration"][-1])
        row["layers"] = int(np.asarray(result.history["layer_nc1"]).shape[1])
        row["seconds"] = result.seconds
        rows.append(row)
        histories.append(history)
        if done is not None:
            done.write_text(json.dumps({"row": row, "history": {k: np.asarray(v).tolist()
                                                                 for k, v in history.items()}}))
    columns = list(dict.fromkeys(k for r in rows for k in r))  # layer counts may differ
    rows = [{c: r.get(c) for c in columns} for r in rows]
    keys = list(dict.fromkeys(k for h in histories for k in h))
    longest = max(len(h["iteration"]) for h in histories)
    histories = [{k: h.get(k, np.full(len(h["iteration"]), np.nan)) for k in keys}
                 for h in histories]
    seconds = time.perf_counter() - t0
    result = GridResult(experiment, rows, histories, seconds)
    if out is not None:
        result.out = io.write_results(out, config_text, rows, histories,
                                      io.manifest(seconds, experiment=experiment.name, kind="net",
                                                  configurations=len(configs)))
    return result


def varying_columns(table: dict, seeds: bool = False) -> list[str]:
    """The configuration columns ("section.key", and "seed" if asked) that differ across rows."""
    prefixes = ("data", "model", "train") + (("seed",) if seeds else ())
    return [c for c in table if c.split(".")[0] in prefixes and len({str(v) for v in table[c]}) > 1]


def summary(table: dict) -> str:
    """One line per configuration: what varies, accuracies, NC metrics, layer-wise NC1."""
    from ufm.cli import _format_table, _fmt

    varying = varying_columns(table, seeds=True)
    header = ["configuration", "train acc", "test acc", "nc1", "nc2_W", "nc2_H", "nc3", "nc4",
              "layer nc1 (first -> last)"]
    lines = []
    for i in range(len(table["row"])):
        label = ", ".join(f"{c.split('.')[-1]}={table[c][i]}" for c in varying) or "run"
        layers = int(table["layers"][i])
        lines.append([label, f"{table['train_acc'][i]:.3f}", f"{table['test_acc'][i]:.3f}",
                      *(_fmt(table[m][i]) for m in ("nc1", "nc2_W", "nc2_H", "nc3", "nc4")),
                      f"{_fmt(table['layer_nc1_0'][i])} -> "
                      f"{_fmt(table[f'layer_nc1_{layers - 1}'][i])} ({layers} layers)"])
    return "\n".join(_format_table(header, lines))
