"""Transfer learning read through neural collapse (Li et al. 2022, "Principled and efficient
transfer learning of deep models via neural collapse"): a network pretrained on source classes,
its frozen layers measured on target data, and three ways to adapt it.

    source, target = split_classes(data, source=range(5), target=range(5, 10))
    model = models.build("mlp", input_shape=..., num_classes=5); train(model, source, settings)
    curves = frozen_layer_nc(model, target)          # NC1 / NC2 of every layer, every split
    probes = probe_layers(model, target)             # a ridge linear probe per layer
    layer = choose_layer(curves["train_nc1_layers"])
    tuned, info = fine_tune(model, target, "layer", settings, layer=layer)

Fine-tuning modes (`MODES`), each with a new head for the target classes:
  "probe"  the head alone; the body frozen (a linear probe trained like the network)
  "layer"  the head and one chosen layer of the body (Li et al.'s one-layer fine-tuning)
  "full"   every parameter
Frozen parameters stay bit for bit as they were (`train(..., trainable=...)`); BatchNorm's
running statistics are not parameters and keep updating in training mode (a ResNet's frozen
stages see the target data's statistics, as with `model.train()` in PyTorch).

The layer-wise NC1 of target data on a source-trained network first falls, then may rise again
past the layers that became specific to the source classes (the "two phases"); `choose_layer`
picks the layer after the minimum, the first one that the target classes do not suit.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from jax.typing import ArrayLike

from ufm.analysis import layerwise
from ufm.nets import data as _data
from ufm.nets import models
from ufm.nets.data import Dataset
from ufm.nets.training import TrainResult, TrainSettings, representations, train

MODES = ("probe", "layer", "full")
# Ridge penalty of the linear probes, relative to the mean squared feature norm, and the
# samples per split they are trained and evaluated on at most.
PROBE_RIDGE = 1e-3
PROBE_SAMPLES = 2000


def split_classes(data: Dataset, source: Sequence[int],
                  target: Sequence[int]) -> tuple[Dataset, Dataset]:
    """Two datasets from one: the samples of the `source` classes and those of the `target`
    classes (every split, the out-of-distribution one too), each relabelled 0..len - 1 in the
    order given."""
    source, target = [int(k) for k in source], [int(k) for k in target]
    if not source or not target or set(source) & set(target) or any(
            not 0 <= k < data.num_classes for k in source + target):
        raise ValueError(f"source={source} and target={target} are not allowed: two non-empty, "
                         f"disjoint lists of classes in 0..{data.num_classes - 1}")

    def part(classes):
        relabel = np.full(data.num_classes, -1, np.int32)
        relabel[classes] = np.arange(len(classes), dtype=np.int32)

        def keep(x, y):
            mask = relabel[y] >= 0
            return x[mask], relabel[y[mask]]

        x_tr, y_tr = keep(data.x_train, data.y_train)
        x_te, y_te = keep(data.x_test, data.y_test)
        ood = ((None, None) if data.x_ood is None else keep(data.x_ood, data.y_ood))
        return data._replace(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te,
                             num_classes=len(classes), x_ood=ood[0], y_ood=ood[1])

    return part(source), part(target)


def frozen_layer_nc(model: nnx.Module, data: Dataset, layer_samples: int = 1000) -> dict:
    """NC1 and NC2 (class means) of every layer of `model` (no head needed) on every split of
    `data`, from the split's first `layer_samples` samples (class-stratified):
    "<split>_nc1_layers", "<split>_nc2_layers" (arrays over layers)."""
    K = data.num_classes
    out = {}
    for split, x, y in data.splits():
        take = _data.stratified_subset(y, layer_samples, K)
        found = [layerwise.layer_nc(r.T, y[take], K) for r in representations(model,
                                                                                x[take])]
        out[f"{split}_nc1_layers"] = np.array([f["nc1"] for f in found])
        out[f"{split}_nc2_layers"] = np.array([f["nc2"] for f in found])
    return out


def ridge_probe(features_train: ArrayLike, y_train: ArrayLike,
                evaluations: Sequence[tuple[ArrayLike, ArrayLike]], num_classes: int,
                ridge: float = PROBE_RIDGE) -> list[float]:
    """A linear probe (`layerwise.ridge_classifier` on the training features), its accuracy
    on each (features, labels) of `evaluations`."""
    W, b = layerwise.ridge_classifier(features_train, y_train, num_classes, ridge)
    return [float(np.mean(np.argmax(np.asarray(f, np.float64) @ W.T + b, axis=1) == labels))
            for f, labels in evaluations]


def probe_layers(model: nnx.Module, data: Dataset, ridge: float = PROBE_RIDGE,
                 samples: int = PROBE_SAMPLES) -> dict:
    """A ridge linear probe on every layer's frozen features: trained on (at most `samples`,
    class-stratified) samples of the training split, "<split>_probe_acc_layers" (arrays over
    layers) on as many of every split's. The cap keeps a ResNet's flattened feature maps
    (16,384 numbers a sample in its first stage) within memory."""
    K = data.num_classes
    take = {split: _data.stratified_subset(y, samples, K) for split, _, y in data.splits()}
    y_train = data.y_train[take["train"]]
    train_layers = representations(model, data.x_train[take["train"]])
    others = [(split, representations(model, x[take[split]]), y[take[split]])
              for split, x, y in data.splits()]
    out = {f"{split}_probe_acc_layers": [] for split, _, _ in others}
    for j, H in enumerate(train_layers):
        accuracies = ridge_probe(H, y_train, [(layers[j], y) for _, layers, y in others],
                                 data.num_classes, ridge)
        for (split, _, _), accuracy in zip(others, accuracies):
            out[f"{split}_probe_acc_layers"].append(accuracy)
    return {k: np.array(v) for k, v in out.items()}


def choose_layer(nc1_layers: Sequence[float]) -> int:
    """The layer to fine-tune from the target data's frozen NC1 curve: the one after its
    minimum (where the target classes stop separating further), or the last layer when the
    curve falls all the way."""
    nc1 = np.asarray(nc1_layers, np.float64)
    return int(min(int(np.nanargmin(nc1)) + 1, len(nc1) - 1))


def trainable_filter(model: nnx.Module, mode: str,
                     layer: int | None = None) -> nnx.filterlib.Filter:
    """The nnx filter of the parameters that `mode` trains (module docstring): the head's, and
    with "layer" those of representation `layer` (`model.layer_paths()`), or all."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed: one of {list(MODES)}")
    if mode == "full":
        return nnx.Param
    prefixes = [("head",)]
    if mode == "layer":
        paths = model.layer_paths()
        if layer is None or not -len(paths) <= layer < len(paths):
            raise ValueError(f"layer={layer!r} is not allowed: a layer index in "
                             f"0..{len(paths) - 1}")
        prefixes += list(paths[layer])

    def chosen(path, value):
        return isinstance(value, nnx.Param) and any(
            tuple(path[:len(prefix)]) == tuple(prefix) for prefix in prefixes)

    return chosen


def count_parameters(model: nnx.Module, selected: nnx.filterlib.Filter = nnx.Param) -> int:
    """Entries of the parameters the nnx filter `selected` picks."""
    return int(sum(np.size(x) for x in jax.tree.leaves(nnx.state(model, selected))))


def fine_tune(model: nnx.Module, target: Dataset, mode: str, settings: TrainSettings | None = None,
              *, layer: int | None = None, head: str = "learned", progress: bool | None = False,
              out: str | Path | None = None) -> tuple[TrainResult, dict]:
    """Adapt a copy of a pretrained `model` to `target`: a new head ("learned" or "cmf") for its
    classes, then training of what `mode` selects (`trainable_filter`). Returns (TrainResult,
    info) with info = {"mode", "layer", "params_trained", "params_total"}; the model passed in
    is left as it was."""
    settings = TrainSettings() if settings is None else settings
    tuned = copy.deepcopy(model)  # nnx modules are Python objects: a deep copy is independent
    features = tuned.head.W[...].shape[1]
    tuned.head = models.Head(features, target.num_classes, kind=head,
                             bias=tuned.head.b is not None, normalize=tuned.head.normalize,
                             rngs=nnx.Rngs(settings.seed + 1))
    selected = trainable_filter(tuned, mode, layer)
    info = {"mode": mode, "layer": -1 if mode != "layer" else int(layer),
            "params_trained": count_parameters(tuned, selected),
            "params_total": count_parameters(tuned)}
    result = train(tuned, target, settings, trainable=selected, progress=progress, out=out)
    return result, info
