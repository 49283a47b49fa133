"""The transfer kind (`kind = "transfer"`): pretrain a network on source classes, measure its
frozen layers on the target classes, fine-tune it three ways (`ufm.nets.transfer`).

    kind = "transfer"
    [data]      name, path, image, gaussian_dim, separation, n_train, ood, ood_strength,
                standardize (as in the net kind), source, target (lists of class indices: the
                split)
    [model]     name, width, depth, blocks, feature_dim, bias, normalize, batchnorm
    [pretrain]  the net kind's [train] keys: how the source network is trained
    [finetune]  epochs, lr, optimizer, momentum, schedule, batch_size, eval_every,
                weight_decay, lam_W, lam_H, lam_b (loss and temperature as in pretraining),
                head ("learned" | "cmf": the new head's kind), layer (-1: chosen from the
                target data's frozen NC1 curve, `transfer.choose_layer`)
    [run]       seeds

One unit per configuration; its three rows are the fine-tuning modes ("probe", "layer",
"full"), each with the layer trained, the parameters trained and in all, accuracy and NC on
the target's train / test / ood splits, and the frozen network's curves on the target data:
frozen_<split>_nc1_layer<j>, frozen_<split>_nc2_layer<j> and probe_<split>_acc_layer<j> (a ridge
linear probe per layer). Configurations that share the pretraining (e.g. a finetune.head axis)
pretrain once per process.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ufm.nets import transfer
from ufm.nets.training import TrainSettings, train
from ufm.running import config, results
from ufm.running.config import ConfigError, Experiment, Field, Schema
from ufm.running.figures import (
    draw_figure,
    pyplot,
    save_figure,
)
from ufm.running.kind import Kind, Unit
from ufm.running.kinds import net
from ufm.running.results import UnitResult, float_column
from ufm.running.tables import fmt, format_table

DATA = {k: v for k, v in net.DEFAULTS["data"].items() if k != "variant"}
MODEL = {k: v for k, v in net.DEFAULTS["model"].items() if k != "head"}
FINETUNE = {"epochs": 100, "lr": 0.05, "optimizer": "momentum", "momentum": 0.9,
            "schedule": "cosine", "batch_size": 128, "eval_every": 25, "weight_decay": 2e-3,
            "lam_W": 2e-3, "lam_H": 1e-4, "lam_b": 2e-3, "head": "learned", "layer": -1}
CLASSES = lambda v: bool(v) and min(v) >= 0
SCHEMA = Schema({
    "data": {**{k: net._field("data", k, v) for k, v in DATA.items()},
             "source": Field([0, 1, 2, 3, 4], "ints", rule=(CLASSES, "a non-empty list of "
                                                           "class indices"),
                             meaning="the classes the network is pretrained on"),
             "target": Field([5, 6, 7, 8, 9], "ints", rule=(CLASSES, "a non-empty list of "
                                                           "class indices"),
                             meaning="the classes it is measured and fine-tuned on")},
    "model": {k: net._field("model", k, v) for k, v in MODEL.items()},
    "pretrain": {k: net._field("train", k, v) for k, v in net.DEFAULTS["train"].items()},
    "finetune": {**{k: net._field("train", k, v) for k, v in FINETUNE.items()
                    if k not in ("head", "layer")},
                 "head": Field("learned", "str", axis=True, choices=("learned", "cmf"),
                               meaning="the target's new head: learned, or the running class "
                                       "means (CMF)"),
                 "layer": Field(-1, "int", axis=True, rule=(lambda v: v >= -1,
                                                            "an integer >= -1 (-1: chosen)"),
                                meaning="the layer the 'layer' mode fine-tunes with the head (-1: "
                                        "the one after the target's frozen NC1 minimum)")},
    "run": net.SCHEMA.sections["run"],
}, default_name="transfer")


def configurations(experiment: config.Experiment) -> list[dict]:
    return [{**{f"{s}.{k}": v for (s, k), v in point.values.items() if s != "run"},
             "seed": point.seed} for point in config.points(experiment, SCHEMA)]


def _net_config(cfg: dict, section: str) -> dict:
    """A net-kind configuration ("data.*", "model.*", "train.*") from a transfer one: the
    pretraining's, or the fine-tuning's (its keys over the pretraining's)."""
    out = {k: v for k, v in cfg.items() if k.split(".")[0] in ("data", "model")}
    out.update({"data.variant": "none", "model.head": "learned", "seed": cfg["seed"]})
    out.pop("data.source", None)
    out.pop("data.target", None)
    train_keys = {f"train.{k.split('.', 1)[1]}": v for k, v in cfg.items()
                  if k.startswith("pretrain.")}
    if section == "finetune":
        train_keys.update({f"train.{k.split('.', 1)[1]}": v for k, v in cfg.items()
                           if k.startswith("finetune.") and k.split(".", 1)[1] in FINETUNE
                           and k.split(".", 1)[1] not in ("head", "layer")})
    return {**out, **train_keys}


def check(experiment: Experiment) -> None:
    for cfg in configurations(experiment):
        source, target = cfg["data.source"], cfg["data.target"]
        if set(source) & set(target):
            raise ConfigError(f"data.source={source} and data.target={target} are not allowed: "
                              "the two class lists must be disjoint")
        for section in ("pretrain", "finetune"):
            try:
                net._settings(_net_config(cfg, section)).check()
            except ValueError as err:
                raise ConfigError(str(err).replace("train.", f"{section}.")) from None


def units(experiment: Experiment, folder: Path) -> list[Unit]:
    n = len(configurations(experiment))
    k = len(transfer.MODES)
    return [Unit(f"config-{i:05d}", tuple(range(i * k, (i + 1) * k)), 1, i) for i in range(n)]


# Pretrained networks of this process, by their pretraining configuration: a finetune axis
# reuses them instead of pretraining again.
_PRETRAINED: dict = {}


def _pretrained(cfg: dict, scratch):
    pre = _net_config(cfg, "pretrain")
    key = json.dumps({**pre, "source": cfg["data.source"]}, sort_keys=True)
    if key not in _PRETRAINED:
        data = net._dataset(pre)
        source, target = transfer.split_classes(data, cfg["data.source"], cfg["data.target"])
        model = net._model(pre, source)
        result = train(model, source, net._settings(pre), progress=False, model_description=key,
                       out=None if scratch is None else scratch / "pretrain",
                       foreign_checkpoint="restart")  # the folder's scratch
        _PRETRAINED.clear()  # one at a time: a ResNet's state is large
        _PRETRAINED[key] = (model, source, target, result.final)
    return _PRETRAINED[key]


def _flatten(history: dict) -> dict:
    out = {k: v for k, v in history.items() if not k.endswith("_layers")}
    for key, value in history.items():
        if key.endswith("_layers"):
            for j, column in enumerate(np.asarray(value).T):
                out[f"{key[:-1]}{j}"] = column
    return out


def run_unit(experiment: Experiment, unit: Unit, bar: Any, scratch: Path) -> UnitResult:
    index = unit.spec
    cfg = configurations(experiment)[index]
    model, source, target, source_final = _pretrained(cfg, scratch)
    curves = transfer.frozen_layer_nc(model, target)
    probes = transfer.probe_layers(model, target)
    chosen = (cfg["finetune.layer"] if cfg["finetune.layer"] >= 0
              else transfer.choose_layer(curves["train_nc1_layers"]))
    settings: TrainSettings = net._settings(_net_config(cfg, "finetune"))
    frozen = {}
    for key, values in {**curves, **probes}.items():
        name = key[:-len("_layers")]
        prefix = "probe_" if "probe" in key else "frozen_"
        name = name.replace("_probe_acc", "_acc") if prefix == "probe_" else name
        frozen.update({f"{prefix}{name}_layer{j}": float(v) for j, v in enumerate(values)})
    rows, histories = [], []
    for m, mode in enumerate(transfer.MODES):
        result, info = transfer.fine_tune(model, target, mode, settings, layer=chosen,
                                          head=cfg["finetune.head"])
        history = _flatten(result.history)
        row = {"row": unit.rows[m], **{k: v for k, v in cfg.items()}, "mode": mode,
               "layer": info["layer"], "chosen_layer": int(chosen),
               "params_trained": info["params_trained"], "params_total": info["params_total"],
               "source_test_acc": float(source_final["test_acc"]), "ood": target.ood}
        row.update({k: float(v[-1]) for k, v in history.items() if k != "iteration"})
        row.update(frozen)
        row["layers"] = len(curves["train_nc1_layers"])
        rows.append(row)
        histories.append(history)
        if bar is not None:
            bar.set_description(f"{mode}: test acc {row['test_acc']:.3f}")
    return UnitResult(rows, histories, {})


def summary(table: dict) -> str:
    """One line per fine-tuning: what varies, the mode, the layer trained, the parameters
    trained, accuracy and NC1 on the target's splits."""
    varying = [c for c in table if c.split(".")[0] in ("data", "model", "pretrain", "finetune",
                                                       "seed")
               and len({str(v) for v in table[c]}) > 1]
    ood = "ood_acc" in table and not np.all(np.isnan(float_column(table, "ood_acc")))
    splits = ("train", "test", "ood") if ood else ("train", "test")
    header = ["configuration", "mode", "layer (from 0)", "params trained / all",
              "target acc " + "/".join(splits), "target nc1 " + "/".join(splits)]
    lines = []
    for i in range(len(table["row"])):
        label = ", ".join(f"{c.split('.')[-1]}={table[c][i]}" for c in varying) or "run"
        layer = int(table["layer"][i])
        lines.append([
            label, str(table["mode"][i]), "-" if layer < 0 else str(layer),
            f"{int(table['params_trained'][i])} / {int(table['params_total'][i])}",
            "/".join(f"{float_column(table, f'{s}_acc')[i]:.3f}" for s in splits),
            "/".join(fmt(float_column(table, f"{s}_nc1")[i]) for s in splits)])
    out = format_table(header, lines)
    first = 0
    layers = int(table["layers"][first])
    for split in splits:
        curve = [float_column(table, f"frozen_{split}_nc1_layer{j}")[first] for j in
                 range(layers)]
        probe = [float_column(table, f"probe_{split}_acc_layer{j}")[first] for j in
                 range(layers)]
        out.append(f"frozen network on the target's {split} split, layer by layer: NC1 "
                   + " ".join(fmt(v) for v in curve) + "; ridge probe accuracy "
                   + " ".join(f"{v:.3f}" for v in probe))
    out.append(f"(layer chosen from the frozen NC1 curve: {int(table['chosen_layer'][first])}; "
               f"source test accuracy {float(table['source_test_acc'][first]):.3f})")
    return "\n".join(out)


# ----------------------------------------------------------------------------- figures


def plot_transfer(directory: Path) -> list[Path]:
    """Transfer experiments: the frozen source network's layer-wise NC1 on the target's splits
    (the two-phase curve where it appears), the ridge probe's accuracy per layer, and the
    target accuracy of each fine-tuning mode with the parameters it trains (first
    configuration of each distinct pretraining)."""
    directory = Path(directory)
    table = results.read_table(directory / results.RESULTS)
    return draw_figure("transfer.png", _transfer, directory, table)


def _transfer(directory: Path, table) -> list[Path]:
    plt = pyplot()
    layers = int(table["layers"][0])
    splits = [s for s in ("train", "test", "ood")
              if not np.all(np.isnan(results.float_column(table, f"frozen_{s}_nc1_layer0")))]
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8), layout="constrained")
    depth = np.arange(1, layers + 1)
    for split in splits:
        axes[0].semilogy(depth, [results.float_column(table, f"frozen_{split}_nc1_layer{j}")[0]
                                 for j in range(layers)], "o-", label=split)
        axes[1].plot(depth, [results.float_column(table, f"probe_{split}_acc_layer{j}")[0]
                             for j in range(layers)], "o-", label=split)
    chosen = int(table["chosen_layer"][0]) + 1
    for ax in axes[:2]:
        ax.axvline(chosen, color="k", ls=":", lw=1, label=f"chosen layer {chosen}")
        ax.set_xlabel("layer of the source-trained network")
        ax.legend(fontsize=8)
    axes[0].set_title("NC1 of the target classes, frozen features", fontsize=10)
    axes[1].set_title("ridge linear probe per layer: target accuracy", fontsize=10)
    modes = [str(m) for m in table["mode"]]
    x = np.arange(len(modes))
    for offset, split in zip((-0.25, 0.0, 0.25), splits):
        axes[2].bar(x + offset, results.float_column(table, f"{split}_acc"), width=0.25,
                    label=split)
    heads = [str(h) for h in table.get("finetune.head", [""] * len(modes))]
    axes[2].set_xticks(x, [f"{m}, {h}\n{int(p) / 1000:.3g}k params" for m, h, p in
                           zip(modes, heads, table["params_trained"])], fontsize=7,
                       rotation=30)
    axes[2].set_ylim(0, 1.05)
    axes[2].set_title("fine-tuning: target accuracy", fontsize=10)
    axes[2].legend(fontsize=8)
    return [save_figure(fig, directory / "transfer.png")]


KINDS = {"transfer": Kind(
    "transfer", SCHEMA, check, units, run_unit, summary,
    lambda directory, table, metrics=None, x=None, y=None: plot_transfer(directory),
    lambda experiment: f"{len(configurations(experiment))} transfers "
                       f"({len(transfer.MODES)} fine-tunings each)",
    quick={"pretrain": {"epochs": 2, "eval_every": 1}, "finetune": {"epochs": 2, "eval_every": 1},
           "data": {"n_train": 20}, "run": {"seeds": [0]}},
    about="Transfer through the lens of NC: a network pretrained on the source classes, its "
          "frozen layers measured on the target classes (NC1, NC2, a linear probe per layer), "
          "then fine-tuned three ways (head only, one layer, everything); three rows per "
          "configuration.")}
