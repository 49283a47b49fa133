"""The network kind (`kind = "net"`): flax networks trained on a grid of settings, one unit of
work per configuration, run by `ufm run FILE` into a results folder like every kind.

    kind = "net"
    name = "net_losses"
    [data]   name ("digits" | "mnist" | "cifar10" | "gaussian" | "arrays": the user's .npz at
             path, standardized unless standardize = false), path, variant ("none" |
             "random_labels" | "random_inputs"), n_train (per class; 0 = all), image (bool),
             gaussian_dim, separation, ood (an out-of-distribution split: "none" |
             "rotation" | "noise" | "contrast" | "cifar10.1" | "cifar10.2", `ufm.nets.data`),
             ood_strength (0 = the shift's default)
    [model]  name ("mlp" | "resnet"), width, depth (MLP), blocks (ResNet), feature_dim (0 = the
             body's width), head ("learned" | "etf" | "cmf"), bias, normalize, batchnorm (MLP)
    [train]  loss, optimizer ("gd" | "momentum" | "adam"), lr, momentum, schedule, epochs,
             batch_size, eval_every, weight_decay, lam_W, lam_H, lam_b, tau, alpha, gamma,
             kappa, M, cmf_momentum, layer_samples, checkpoint_every
    [run]    seeds (list)
    [[zip]]  "section.key" = [...] lists of one length that advance together (e.g. a loss with
             its learning rate)

Any value may be a list: a grid axis (the configurations are trained one after another, or one
per process). The config engine is `ufm.running.config`'s, shared with every kind. Every finished
configuration is checkpointed at once; an interrupted one resumes from its training state
(`train.checkpoint_every`). Table columns: the configuration as "section.key", the final metrics,
the final NC1 of every layer as nc1_layer0, nc1_layer1, ... (as in the deep UFM's histories).
Every metric is measured on every split: train_nc1, test_nc1, ood_nc1 (and the same for each
metric, the layer-wise NC1 and NC2, and the fit of the layer NC1's geometric decay,
*_nc1_decay_ratio and *_nc1_decay_r2); the unprefixed names are the training split's. Rows
also carry params_total and params_classifier (trainable parameters).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ufm.model.losses import LOSSES
from ufm.model.problem import Hyper
from ufm.nets import data as _data
from ufm.nets import models
from ufm.nets.training import OPTIMIZERS, SCHEDULES, TrainSettings, layer_nc3, train
from ufm.running import config, results
from ufm.running.config import ConfigError, Experiment, Field, Schema
from ufm.running.figures import (
    diverged_rows,
    draw_figure,
    draw_trajectories,
    figure_legend,
    nan_stats,
    pyplot,
    save_figure,
    set_scale,
    shown_on,
    step_axis,
)
from ufm.running.kind import Kind, Unit
from ufm.running.results import UnitResult, float_column
from ufm.running.tables import (
    cross_loss_spread,
    fmt,
    format_table,
    net_varying_columns,
    series_labels,
)

DEFAULTS = {
    "data": {"name": "digits", "path": "", "variant": "none", "n_train": 0, "image": False,
             "gaussian_dim": 32, "separation": 3.0, "ood": "none", "ood_strength": 0.0,
             "standardize": True},
    "model": {"name": "mlp", "width": 128, "depth": 3, "blocks": 2, "feature_dim": 0,
              "head": "learned", "bias": True, "normalize": False, "batchnorm": False},
    "train": {"loss": "ce", "optimizer": "momentum", "lr": 0.1, "momentum": 0.9,
              "schedule": "cosine", "epochs": 300, "batch_size": 128, "eval_every": 25,
              "weight_decay": 2e-3, "lam_W": 2e-3, "lam_H": 1e-4, "lam_b": 2e-3, "tau": 1.0,
              "alpha": 0.1, "gamma": 2.0, "kappa": 1.0, "M": 1.0, "cmf_momentum": 0.9,
              "layer_samples": 1000, "checkpoint_every": 25},
}
HYPER_KEYS = ("lam_W", "lam_H", "lam_b", "tau", "alpha", "gamma", "kappa", "M")
CHOICES = {("data", "name"): _data.DATASETS,
           ("data", "variant"): ("none", "random_labels", "random_inputs"),
           ("data", "ood"): _data.SHIFTS,
           ("model", "name"): ("mlp", "resnet"), ("model", "head"): ("learned", "etf", "cmf")}
NON_NEGATIVE = (lambda v: v >= 0, "an integer >= 0")


# One line each for the configuration reference (`ufm config net`), with what is allowed where
# `ufm.nets` checks the value.
MEANINGS = {
    "data": {
        "name": "the dataset: scikit-learn's bundled digits, MNIST or CIFAR-10 files at path, "
                "Gaussian blobs, or your own arrays (an .npz file at path)",
        "path": ("the folder of the MNIST or CIFAR-10 files, or the arrays' .npz file (x_train, "
                 "y_train, x_test, y_test, optionally x_ood, y_ood; nothing is downloaded)",
                 "a path, or '' for the bundled and generated data"),
        "variant": "random_labels: uniformly random training labels; random_inputs: training "
                   "inputs replaced by Gaussian noise (Zhang et al. 2017)",
        "n_train": ("training samples per class (0: all)", "an integer >= 0"),
        "image": "keep images as images (a ResNet's input) instead of flat vectors",
        "gaussian_dim": ("gaussian: the input dimension", "an integer >= 1"),
        "separation": ("gaussian: the norm of each class mean (unit-variance noise)",
                       "a number > 0"),
        "ood": "an out-of-distribution split to measure as well ('none': no such split)",
        "ood_strength": ("the shift's strength (0: its default)", "a number >= 0"),
        "standardize": "name = 'arrays': standardize every input feature by the training "
                       "split's mean and deviation (the bundled data are standardized anyway)",
    },
    "model": {
        "name": "the network: an MLP or a ResNet (image inputs)",
        "width": ("the MLP's hidden width; the ResNet's first stage's channels",
                  "an integer >= 1"),
        "depth": ("the MLP's hidden layers", "an integer >= 1"),
        "blocks": ("the ResNet's basic blocks in each of its three stages", "an integer >= 1"),
        "feature_dim": ("d, the features the head sees: a linear projection to d (0: none, "
                        "the body's width)", "an integer >= 0"),
        "head": "the classifier: learned, a fixed simplex ETF, or the running class means (CMF)",
        "bias": "the head's bias",
        "normalize": "put the features and a learned head's rows on the unit sphere (the "
                     "sphere UFM; with tau)",
        "batchnorm": "batch normalization in the MLP's hidden layers",
    },
    "train": {
        "loss": ("the per-sample loss (as the UFM's)",
                 "one of " + ", ".join(repr(x) for x in sorted(LOSSES))),
        "optimizer": ("the optimizer", "one of " + ", ".join(repr(x) for x in OPTIMIZERS)),
        "lr": ("the peak learning rate", "a number > 0"),
        "momentum": ("the optimizer's momentum", "a number in [0, 1)"),
        "schedule": ("the learning-rate schedule over the epochs",
                     "one of " + ", ".join(repr(x) for x in SCHEDULES)),
        "epochs": ("passes over the training data", "an integer >= 1"),
        "batch_size": ("samples per step", "an integer >= 1"),
        "eval_every": ("epochs between measurements of every metric", "an integer >= 1"),
        "weight_decay": ("the penalty weight_decay/2 ||theta||^2 on the body's parameters",
                         "a number >= 0"),
        "lam_W": "the UFM penalty on the head: lam_W/2 ||W||_F^2",
        "lam_H": "the UFM penalty on the features, lam_H/2 ||H||_F^2 (scaled by N/B per batch)",
        "lam_b": "the UFM penalty on the head's bias",
        "tau": "the temperature: the loss sees the logits / tau",
        "alpha": "label smoothing",
        "gamma": "the focal loss's exponent",
        "kappa": "rescaled MSE: the weight of the true class's term",
        "M": "rescaled MSE: the target's magnitude",
        "cmf_momentum": ("head = 'cmf': the running class means' momentum",
                         "a number in [0, 1)"),
        "layer_samples": ("training samples the layer-wise metrics are measured on",
                          "an integer >= 1"),
        "checkpoint_every": ("epochs between training-state checkpoints (a resumed run goes "
                             "on from the last)", "an integer >= 1"),
    },
}


def _field(section: str, key: str, default) -> Field:
    kind = {bool: "bool", int: "int", float: "float", str: "str"}[type(default)]
    meaning = MEANINGS[section][key]
    meaning, allowed = (meaning, "") if isinstance(meaning, str) else meaning
    return Field(default, kind, axis=True, choices=CHOICES.get((section, key), ()),
                 rule=NON_NEGATIVE if kind == "int" else None, meaning=meaning, allowed=allowed)


SCHEMA = Schema({**{section: {k: _field(section, k, v) for k, v in values.items()}
                    for section, values in DEFAULTS.items()},
                 "run": {"seeds": Field([0], "ints", rule=(
                     lambda v: bool(v) and min(v) >= 0, "a non-empty list of integers >= 0"),
                     meaning="the seeds of every configuration (initialization and batches)")}},
                default_name="net")


def configurations(experiment: config.Experiment) -> list[dict]:
    """Every configuration (flat dict "section.key" -> value, plus "seed"), axes in file order."""
    return [{**{f"{s}.{k}": v for (s, k), v in point.values.items() if s != "run"},
             "seed": point.seed} for point in config.points(experiment, SCHEMA)]


def check(experiment: Experiment) -> None:
    """Settings that only fail in combination (TrainSettings.check), for every configuration."""
    for cfg in configurations(experiment):
        try:
            _settings(cfg).check()
        except ValueError as err:
            raise ConfigError(str(err)) from None


def resolve(raw: dict) -> config.Experiment:
    """Check a parsed network experiment file; every default written out."""
    experiment = config.resolve(raw, SCHEMA, "net")
    check(experiment)
    return experiment


def dumps(experiment: Experiment) -> str:
    return config.dumps(experiment, SCHEMA)


def _settings(cfg):
    t = {k.split(".", 1)[1]: v for k, v in cfg.items() if k.startswith("train.")}
    hyper = Hyper(**{k: float(t.pop(k)) for k in HYPER_KEYS})
    return TrainSettings(hyper=hyper, seed=cfg["seed"], **{k: (float(v) if k in (
        "lr", "momentum", "weight_decay", "cmf_momentum") else v) for k, v in t.items()})


def _dataset(cfg):
    name = cfg["data.name"]
    kwargs = dict(variant=cfg["data.variant"], seed=cfg["seed"],
                  n_train=cfg["data.n_train"] or None, ood=cfg["data.ood"],
                  ood_strength=cfg["data.ood_strength"] or None)
    if name == "gaussian":
        shape = (32, 32, 3) if cfg["model.name"] == "resnet" else (cfg["data.gaussian_dim"],)
        return _data.load(name, shape=shape, separation=cfg["data.separation"], **kwargs)
    image = cfg["data.image"] or cfg["model.name"] == "resnet"
    return _data.load(name, path=cfg["data.path"] or None, image=image,
                      standardize=cfg["data.standardize"], **kwargs)


def _model(cfg, data):
    options = dict(feature_dim=cfg["model.feature_dim"] or None, head=cfg["model.head"],
                   bias=cfg["model.bias"], normalize=cfg["model.normalize"],
                   width=cfg["model.width"])
    if cfg["model.name"] == "mlp":
        options.update(depth=cfg["model.depth"], batchnorm=cfg["model.batchnorm"])
    else:
        options.update(blocks=cfg["model.blocks"])
    return models.build(cfg["model.name"], input_shape=data.input_shape,
                        num_classes=data.num_classes, seed=cfg["seed"], **options)


def units(experiment: Experiment, folder: Path) -> list[Unit]:
    """One unit per configuration (its row index known in advance)."""
    n = len(configurations(experiment))
    return [Unit(f"config-{index:05d}", (index,), 1, index) for index in range(n)]


def run_unit(experiment: Experiment, unit: Unit, bar: Any, scratch: Path) -> UnitResult:
    """Train one configuration; `scratch` keeps its training state so a killed run resumes
    mid-training."""
    index = unit.spec
    cfg = configurations(experiment)[index]
    data = _dataset(cfg)
    model = _model(cfg, data)
    result_settings = _settings(cfg)
    result = train(model, data, result_settings, out=scratch, progress=bar is not None,
                   model_description=json.dumps({k: v for k, v in cfg.items()
                                                 if not k.startswith("train.")},
                                                sort_keys=True),
                   on_divergence="stop",  # a diverging configuration is flagged, not fatal
                   foreign_checkpoint="restart")  # the folder's scratch: recomputed
    layers = np.asarray(result.history["nc1_layers"])
    # per-layer arrays (evaluations, layers) become one history key per layer:
    # nc1_layers -> nc1_layer0, nc1_layer1, ...; test_nc2_layers -> test_nc2_layer0, ...
    history = {k: v for k, v in result.history.items() if not k.endswith("_layers")}
    for key, value in result.history.items():
        if key.endswith("_layers"):
            for j, column in enumerate(np.asarray(value).T):
                history[f"{key[:-len('s')]}{j}"] = column
    row = {"row": index, **cfg}  # configuration columns keep their "section." prefix
    diverged = result.status == "diverged"
    # a diverged run's last evaluation is not its end point: its metrics are left empty
    row.update({k: (None if diverged else float(v[-1])) for k, v in history.items()
                if k != "iteration"})
    row["status"] = result.status
    row["diverged_at"] = result.diverged_at
    row["epochs_run"] = int(history["iteration"][-1])
    row["layers"] = int(layers.shape[1])
    row["ood"] = data.ood
    row.update(models.parameter_counts(model))
    take = _data.stratified_subset(data.y_train, result_settings.layer_samples, data.num_classes)
    if not diverged:
        for j, value in enumerate(layer_nc3(model, data.x_train[take], data.y_train[take],
                                            data.num_classes)):
            row[f"nc3_layer{j}"] = float(value)
    row["seconds"] = result.seconds
    return UnitResult([row], [history], {})


def summary(table: dict) -> str:
    """One line per configuration: what varies, accuracies and NC1 on every split, NC2 / NC3,
    the layer-wise NC1 with its fitted ratio per layer, and the trainable parameters."""
    varying = net_varying_columns(table, seeds=True)
    ood = "ood_acc" in table and not np.all(np.isnan(float_column(table, "ood_acc")))
    header = ["configuration", "acc train/test" + ("/ood" if ood else ""),
              "nc1 train/test" + ("/ood" if ood else ""), "nc2_W", "nc3",
              "layer nc1 (first -> last, ratio/layer)", "params (classifier)"]
    lines = []
    for i in range(len(table["row"])):
        label = ", ".join(f"{c.split('.')[-1]}={table[c][i]}" for c in varying) or "run"
        layers = int(table["layers"][i])
        if "status" in table and str(table["status"][i]) == "diverged":
            lines.append([label, f"diverged at epoch {int(table['diverged_at'][i])}", "-", "-",
                          "-", "-", "-"])
            continue
        splits = ("train", "test", "ood") if ood else ("train", "test")
        accuracy = "/".join(f"{float_column(table, f'{s}_acc')[i]:.3f}" for s in splits)
        nc1 = "/".join(fmt(float_column(table, f"{s}_nc1")[i]) for s in splits)
        ratio = float_column(table, "train_nc1_decay_ratio")[i]
        params = (f"{int(table['params_total'][i])} ({int(table['params_classifier'][i])})"
                  if "params_total" in table else "-")
        lines.append([label, accuracy, nc1, fmt(table["nc2_W"][i]), fmt(table["nc3"][i]),
                      f"{fmt(table['nc1_layer0'][i])} -> "
                      f"{fmt(table[f'nc1_layer{layers - 1}'][i])} ({layers} layers, "
                      f"x{ratio:.3g})", params])
    out = format_table(header, lines)
    out.append("(ratio/layer: the fitted NC1_{l+1}/NC1_l of the training split's layers; params: "
               "trainable, the classifier's in brackets)")
    out += loss_equivalence_lines(table)
    return "\n".join(out)


def loss_equivalence_lines(table: dict) -> list[str]:
    spread = cross_loss_spread(table)
    if not spread:
        return []
    header = ["setting", "losses", "test acc mean", "test acc var", "nc1 mean", "nc1 var"]
    lines = [[label, str(s["losses"]), f"{s['test_acc_mean']:.4f}", fmt(s["test_acc_var"]),
              fmt(s["nc1_mean"]), fmt(s["nc1_var"])] for label, s in spread]
    return ["", "across losses (mean over seeds, then variance over losses):"] + format_table(
        header, lines)


# `ufm run FILE --quick`: two epochs on 20 samples per class, one seed.
QUICK = {"train": {"epochs": 2, "eval_every": 1, "layer_samples": 100},
         "data": {"n_train": 20}, "run": {"seeds": [0]}}


# ----------------------------------------------------------------------------- figures


NET_FIGURES = (("nc1", "NC1", "log"), ("nc2_W", "NC2 (W)", "log"), ("nc2_H", "NC2 (H)", "log"),
               ("nc3", "NC3", "log"), ("train_acc", "train accuracy", "linear"),
               ("test_acc", "test accuracy", "linear"))


def plot_net(directory: Path) -> list[Path]:
    """Network experiments: NC metrics and accuracies over epochs (median and range over
    seeds), the final NC1 of every layer (progressive separation, log scale) and, where the
    loss varies with the width and the epochs, the cross-loss variance; each in isolation."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    history = results.read_history(directory / results.HISTORY, len(table["row"]))
    written = draw_figure("net_training.png", _net_training, directory, table, history)
    if any(k.startswith("nc1_layer") for k in history):
        written += draw_figure("layer_nc1.png", _net_layer_nc1, directory, table, history)
    written += draw_figure("loss_equivalence.png", plot_loss_equivalence, directory, table)
    return written


def _net_training(directory, table, history) -> Path:
    plt = pyplot()
    labels, _ = series_labels(table)
    epochs = np.asarray(history["iteration"])
    diverged = diverged_rows(table)
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.8), layout="constrained")
    for ax, (key, title, scale) in zip(axes.flat, NET_FIGURES):
        if key in history:
            draw_trajectories(ax, epochs, history[key], labels, key, scale, diverged=diverged)
        step_axis(ax, "epoch")
        ax.set_title(title, fontsize=9)
    figure_legend(fig, axes)
    return save_figure(fig, directory / "net_training.png")


def _net_layer_nc1(directory, table, history) -> Path:
    plt = pyplot()
    labels, _ = series_labels(table)
    layer_keys = sorted((k for k in history if k.startswith("nc1_layer")),
                        key=lambda k: int(k[len("nc1_layer"):]))
    fig, ax = plt.subplots(figsize=(5.8, 3.8), layout="constrained")
    final = np.array([[results.float_column(table, k)[i] for k in layer_keys]
                      for i in range(len(table["row"]))], dtype=float)
    for label in dict.fromkeys(labels):
        rows = [i for i, lab in enumerate(labels) if lab == label]
        mid = nan_stats(shown_on(final[rows], "log"))[0]
        if np.isfinite(mid).any():
            ax.plot(np.arange(1, len(layer_keys) + 1), mid, "o-", label=label)
    set_scale(ax, "log")
    ax.set_xlabel("layer")
    ax.set_ylabel("NC1 at the end of training")
    ax.grid(True, which="major", alpha=0.3)
    figure_legend(fig, ax)
    return save_figure(fig, directory / "layer_nc1.png")


def plot_loss_equivalence(directory: Path, table: dict) -> list[Path]:
    """Where train.loss varies with model.width and train.epochs: heatmaps over (width,
    epochs) of the variance across losses of the test accuracy and of NC1 (Zhou et al. 2022's
    figure). Nothing where the width and the epochs do not both vary, or another axis does
    too (the summary's lines give the spread there)."""
    spread = cross_loss_spread(table)
    axes = ("model.width", "train.epochs")
    if not spread or not all(c in spread[0][1]["setting"] for c in axes):
        return []
    if any(set(values["setting"]) != set(axes) for _, values in spread):
        return []  # another axis varies too: the table's lines say it
    widths = sorted({int(values["setting"]["model.width"]) for _, values in spread})
    epochs = sorted({int(values["setting"]["train.epochs"]) for _, values in spread})
    plt = pyplot()
    fig, axs = plt.subplots(1, 2, figsize=(10, 3.6), layout="constrained")
    for ax, (key, title) in zip(axs, (("test_acc_var", "variance of test accuracy"),
                                      ("nc1_var", "variance of NC1"))):
        grid = np.full((len(widths), len(epochs)), np.nan)
        for _, values in spread:
            setting = values["setting"]
            grid[widths.index(int(setting["model.width"])),
                 epochs.index(int(setting["train.epochs"]))] = values[key]
        shown = shown_on(grid, "log")
        finite = shown[np.isfinite(shown)]
        low, high = (np.log10(finite.min()), np.log10(finite.max())) if finite.size else (0, 1)
        im = ax.imshow(np.ma.masked_invalid(np.log10(shown)), origin="lower", aspect="auto",
                       cmap=plt.get_cmap("viridis").with_extremes(bad="0.85"), vmin=low,
                       vmax=high if high > low else low + 1)
        ax.set_xticks(range(len(epochs)), epochs)
        ax.set_yticks(range(len(widths)), widths)
        ax.set_xlabel("epochs")
        ax.set_ylabel("width")
        ax.set_title(f"across losses: log10 {title}", fontsize=10)
        fig.colorbar(im, ax=ax)
    return [save_figure(fig, directory / "loss_equivalence.png")]


KINDS = {"net": Kind(
    "net", SCHEMA, check, units, run_unit, summary,
    lambda directory, table, metrics=None, x=None, y=None: plot_net(directory),
    lambda experiment: f"{len(configurations(experiment))} trainings", quick=QUICK,
    about="Flax networks whose last layer is the UFM, trained on a grid of settings (one "
          "training per configuration and seed), NC measured on every split and layer as "
          "training goes; a row per training with accuracy and every metric at the end.")}
