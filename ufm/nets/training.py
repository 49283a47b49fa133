"""Training a network whose last layer is the UFM, measuring NC with `ufm.analysis.nc`.

Objective per minibatch B of a training set of N samples (docs/science.md, section 1, with the
feature penalty rescaled by N/B so that one epoch estimates the UFM objective):

    (1/B) sum_{i in B} L(z_i / tau, y_i) + lam_W/2 ||W||^2 + lam_b/2 ||b||^2
        + lam_H/2 (N/B) sum_{i in B} ||h_i||^2 + weight_decay/2 ||theta_body||^2

with z_i = W h_i + b and L any loss of `ufm.model.losses` (alpha, gamma, kappa, M from Hyper). On
the
sphere (normalized features) lam_W and lam_H do not apply. A fixed ETF head has no lam_W term;
a CMF head (class means) neither.

Every `eval_every` epochs: the NC metrics of the penultimate features on the training set
(`ufm.analysis.nc.nc_metrics`), train and test accuracy, and the NC1 of every layer's
representation on up to `layer_samples` training samples (progressive separation). With `out`,
a checkpoint (model, optimizer, history; arrays named by their nnx state paths, e.g.
"model/layers/0/kernel") is written every `checkpoint_every` epochs; calling `train` again with
the same settings and `out` resumes from it and ends where an uninterrupted run would
(minibatch order depends only on the seed and the epoch). Checkpoints of the earlier leaf-order
format are still read.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.typing import ArrayLike

from ufm import _atomic
from ufm.analysis import compression, layerwise
from ufm.analysis import nc as metrics
from ufm.model import losses as _losses
from ufm.model.problem import Hyper, validate_hyper
from ufm.nets import data as _data
from ufm.solvers import batching

OPTIMIZERS = ("gd", "momentum", "adam")  # the names of `ufm.solvers.SOLVERS`
SCHEDULES = ("constant", "cosine", "step")
CHECKPOINT = "checkpoint.npz"


# Hyper fields a network's training does not read: the UFM solvers' and the norm balls'.
UNUSED_HYPER_FIELDS = ("lr", "momentum", "beta1", "beta2", "E_W", "E_H")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """How to train. `hyper` carries the UFM penalties and loss parameters (lam_W, lam_H,
    lam_b, tau, alpha, gamma, kappa, M); the optimizer's settings are fields here (`lr`,
    `momentum`), and Hyper's solver and norm-ball fields (lr, momentum, beta1, beta2, E_W, E_H)
    must keep their defaults: `check` refuses them, since a network does not use them."""

    # Defaults: an MLP on the digits reaches NC1 ~ 6e-3, NC2_W ~ 0.04 in 300 epochs (~13 s on
    # 2 CPU cores); the feature penalty lam_H is what drives the collapse this far (without it
    # NC1 stalls near 0.13).
    loss: str = "ce"
    hyper: Hyper = Hyper(lam_W=2e-3, lam_H=1e-4, lam_b=2e-3)
    weight_decay: float = 2e-3
    optimizer: str = "momentum"
    lr: float = 0.1
    momentum: float = 0.9
    schedule: str = "cosine"
    epochs: int = 300
    batch_size: int = 128
    eval_every: int = 25
    seed: int = 0
    cmf_momentum: float = 0.9
    layer_samples: int = 1000
    checkpoint_every: int = 25

    def check(self) -> None:
        """Raise ValueError naming the field, the value and what is allowed."""
        allowed = {"loss": _losses.LOSSES, "optimizer": OPTIMIZERS, "schedule": SCHEDULES}
        for name, options in allowed.items():
            if getattr(self, name) not in options:
                raise ValueError(f"train.{name}={getattr(self, name)!r} is not allowed: one of "
                                 f"{list(options)}")
        for name in ("epochs", "batch_size", "eval_every", "layer_samples", "checkpoint_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"train.{name}={value!r} is not allowed: an integer >= 1")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"train.lr={self.lr!r} is not allowed: a number > 0")
        if not self.weight_decay >= 0:
            raise ValueError(f"train.weight_decay={self.weight_decay!r} is not allowed: >= 0")
        for name in ("momentum", "cmf_momentum"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"train.{name}={getattr(self, name)!r} is not allowed: in [0, 1)")
        validate_hyper(self.hyper)
        for name in UNUSED_HYPER_FIELDS:
            value, default = getattr(self.hyper, name), getattr(Hyper(), name)
            if value != default:
                instead = (f"set TrainSettings.{name}" if name in ("lr", "momentum")
                           else "networks are trained without it")
                raise ValueError(f"train.hyper.{name}={value!r} is not used ({instead}); leave it "
                                 f"at its default {default!r}")

    def to_json(self) -> str:
        fields = dataclasses.asdict(self)
        fields["hyper"] = {k: float(v) for k, v in self.hyper._asdict().items()}
        return json.dumps(fields, sort_keys=True)


@dataclasses.dataclass
class TrainResult:
    """The trained model, its history (dict of arrays, one entry per evaluation; "iteration"
    counts epochs; "nc1_layers" is (evaluations, layers)) and the final evaluation."""

    model: nnx.Module
    history: dict
    final: dict
    seconds: float
    status: str = "finished"  # or "diverged" (train's on_divergence="stop")
    diverged_at: int | None = None  # the epoch whose loss was not finite


def _schedule(s: TrainSettings, steps_per_epoch: int):
    total = s.epochs * steps_per_epoch
    if s.schedule == "cosine":
        return optax.cosine_decay_schedule(s.lr, total)
    if s.schedule == "step":  # /10 at 1/3 and 2/3 of training (Papyan et al. 2020 use 1/3, 2/3)
        return optax.piecewise_constant_schedule(
            s.lr, {total // 3: 0.1, 2 * total // 3: 0.1})
    return optax.constant_schedule(s.lr)


def _optimizer(s: TrainSettings, steps_per_epoch: int) -> optax.GradientTransformation:
    lr = _schedule(s, steps_per_epoch)
    if s.optimizer == "gd":
        return optax.sgd(lr)
    if s.optimizer == "momentum":
        return optax.sgd(lr, momentum=s.momentum)
    return optax.adam(lr)


_BODY_PARAMS = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("head")))  # weight decay's share


def _squared_norm(tree) -> jax.Array:
    return optax.tree.norm(tree, squared=True)


def _objective(model, x, y, s: TrainSettings, n_total: int, num_classes: int):
    hyper = s.hyper
    h = model.features(x)
    head = model.head
    W, b = head.weight(), head.bias()
    Z = (h @ W.T + (0.0 if b is None else b[None, :])).T / hyper.tau  # (K, B)
    Y = jax.nn.one_hot(y, num_classes, dtype=Z.dtype).T
    loss = jnp.mean(_losses.LOSSES[s.loss](Z, Y, hyper))
    penalty = jnp.zeros(())
    if not model.normalize:
        if head.kind == "learned":
            penalty += 0.5 * hyper.lam_W * jnp.sum(W**2)
        penalty += 0.5 * hyper.lam_H * (n_total / x.shape[0]) * jnp.sum(h**2)
    if b is not None:
        penalty += 0.5 * hyper.lam_b * jnp.sum(b**2)
    penalty += 0.5 * s.weight_decay * _squared_norm(nnx.state(model, _BODY_PARAMS))
    correct = jnp.sum(jnp.argmax(Z, axis=0) == y)
    return loss + penalty, (loss, correct, h)


def _step(model, optimizer, x, y, s: TrainSettings, n_total: int, num_classes: int,
          trainable=nnx.Param):
    grad_fn = nnx.value_and_grad(_objective, argnums=nnx.DiffState(0, trainable), has_aux=True)
    (_, (loss, correct, h)), grads = grad_fn(model, x, y, s, n_total, num_classes)
    optimizer.update(model, grads)
    if model.head.kind == "cmf":
        model.head.update_class_means(h, y, s.cmf_momentum)
    return loss, correct


def make_train_step(s: TrainSettings, n_total: int, num_classes: int,
                    trainable: nnx.filterlib.Filter = nnx.Param) -> Callable:
    """One jitted optimizer step on a minibatch: (model, optimizer, x, y) -> (loss, correct);
    updates the model (and a CMF head's class means) in place. `trainable`: an nnx filter of
    the parameters that get gradients (the optimizer must be built with the same `wrt`)."""

    @nnx.jit
    def step(model, optimizer, x, y):
        return _step(model, optimizer, x, y, s, n_total, num_classes, trainable)

    return step


def make_train_epoch(s: TrainSettings, n_total: int, num_classes: int,
                     trainable: nnx.filterlib.Filter = nnx.Param) -> Callable:
    """Every step of an epoch in ONE jitted call: (model, optimizer, xs (S, B, ...), ys (S, B))
    -> losses (S,), the model and optimizer updated in place. A `lax.scan` over the minibatches
    of the model's state (`nnx.split` / `nnx.merge` inside the scan): nnx.jit walks the object
    graph in Python on every call, which costs about as much as a small network's step (the
    digits MLP, width 256, 300 epochs of 10 steps on this 2-core CPU: 12.8 s with a call per
    step, 8.0 s with a call per epoch; the same numbers to the last digit)."""

    @nnx.jit
    def epoch(model, optimizer, xs, ys):
        graphdef, state = nnx.split((model, optimizer))

        def body(state, batch):
            model, optimizer = nnx.merge(graphdef, state)
            loss, _ = _step(model, optimizer, batch[0], batch[1], s, n_total, num_classes,
                            trainable)
            return nnx.split((model, optimizer))[1], loss

        state, losses = jax.lax.scan(body, state, (xs, ys))
        nnx.update((model, optimizer), state)
        return losses

    return epoch


@nnx.jit
def _representations(model, x):
    return model.representations(x)


@nnx.jit
def _features(model, x):
    return [model.features(x)]


def _in_batches(forward, model, x, batch):
    model.eval()
    parts = [forward(model, jnp.asarray(x[i:i + batch])) for i in range(0, len(x), batch)]
    model.train()
    return [np.concatenate([np.asarray(p[j]).reshape(len(p[j]), -1) for p in parts])
            for j in range(len(parts[0]))]


def representations(model: nnx.Module, x: ArrayLike, batch: int = 1000) -> list[np.ndarray]:
    """Every layer's representation of `x` in evaluation mode, flattened to (N, features)."""
    return _in_batches(_representations, model, x, batch)


def features(model: nnx.Module, x: ArrayLike, batch: int = 1000) -> np.ndarray:
    """The penultimate features of `x` in evaluation mode, (N, d), without keeping the other
    layers' (large, for a ResNet) activations."""
    return _in_batches(_features, model, x, batch)[0]


def evaluate(model: nnx.Module, data: _data.Dataset, layer_samples: int = 1000) -> dict:
    """NC on every split of `data` (train, test, and ood where the dataset has one): for each,
    the accuracy, every NC metric of the penultimate features with the classifier and bias
    (`ufm.nc_metrics`, compression included), and on the split's first `layer_samples` samples
    (class-stratified: the same share of every class) the NC1 and NC2 of every layer with the
    geometric-decay fit of the layer NC1 (`layerwise.geometric_decay`).

    Keys "<split>_<metric>": train_acc, test_nc1, ood_nc2_W, ...; "<split>_nc1_layers" and
    "<split>_nc2_layers" (arrays, one entry per layer), "<split>_nc1_decay_ratio" and
    "<split>_nc1_decay_r2". The training split's are also given without the prefix (nc1,
    nc1_layers, ...), the names earlier versions used."""
    K = data.num_classes
    head = model.head
    W = np.asarray(head.weight())
    b = None if head.bias() is None else np.asarray(head.bias())
    out = {}
    for split, x, y in data.splits():
        H = features(model, x)
        logits = H @ W.T + (0.0 if b is None else b[None, :])
        out[f"{split}_acc"] = float(np.mean(np.argmax(logits, 1) == y))
        nc = metrics.nc_metrics(W, H.T, y, b)
        out.update({f"{split}_{k}": float(v) for k, v in nc.items()})
        out.update({f"{split}_{k}": v for k, v in compression.compression_metrics(
            H.T, y, K).items()})
        take = _data.stratified_subset(y, layer_samples, K)
        # on the host: every layer and split has its own shape (a jitted metric would compile
        # for each)
        found = [layerwise.layer_nc(r.T, y[take], K) for r in representations(model,
                                                                                x[take])]
        nc1 = np.array([f["nc1"] for f in found])
        out[f"{split}_nc1_layers"] = nc1
        out[f"{split}_nc2_layers"] = np.array([f["nc2"] for f in found])
        fit = layerwise.geometric_decay(nc1)
        out[f"{split}_nc1_decay_ratio"], out[f"{split}_nc1_decay_r2"] = fit["ratio"], fit["r2"]
    out.update({k[len("train_"):]: v for k, v in list(out.items())
                if k.startswith("train_") and k != "train_acc"})
    return out


def layer_nc3(model: nnx.Module, x: ArrayLike, y: ArrayLike, num_classes: int) -> np.ndarray:
    """NC3 of every layer, || W M / ||W M||_F - E ||_F with M the layer's centred class means
    and W the layer's own linear classifier, a ridge probe fit to it
    (`layerwise.ridge_classifier`; a hidden layer has no classifier of its own). At the last
    layer it measures the probe, not the network's head (nc3 does that)."""
    K = num_classes
    etf = (np.eye(K) - 1.0 / K) / np.sqrt(K - 1)
    out = []
    for H in representations(model, x):
        W, _ = layerwise.ridge_classifier(H, y, K)
        G = W @ layerwise.layer_nc(H.T, y, K)["M"]
        out.append(float(np.linalg.norm(G / np.linalg.norm(G) - etf)))
    return np.array(out)


def _state_paths(obj) -> list[tuple[str, object]]:
    """(name, leaf) of an nnx object's state, named by its path ("head/W",
    "layers/0/kernel", "opt_state/0/trace/head/W"): a checkpoint that does not depend on the
    order in which leaves are flattened."""
    named = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(nnx.state(obj))[0]:
        parts = [str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path]
        if parts and parts[-1] == "value":  # the Variable's own attribute
            parts = parts[:-1]
        named.append(("/".join(parts), leaf))
    return named


def _save_checkpoint(path: Path, settings_json: str, epoch: int, model, optimizer, history):
    """The training state as a numpy archive, arrays named by their state paths ("model/...",
    "opt/...") with the metadata as JSON (the results folder's format, written atomically:
    `ufm._atomic.write_arrays`)."""
    arrays = {f"{prefix}/{name}": np.asarray(x)
              for prefix, obj in (("model", model), ("opt", optimizer))
              for name, x in _state_paths(obj)}
    meta = json.dumps({"settings": settings_json, "epoch": epoch,
                       "history": {k: np.asarray(v).tolist() for k, v in history.items()}})
    _atomic.write_arrays(path, {"meta": np.frombuffer(meta.encode(), np.uint8), **arrays})


def _load_checkpoint(path: Path, settings_json: str, model, optimizer, foreign: str):
    """(epoch, history) from a checkpoint of the same settings, or None. A damaged checkpoint
    is named in a warning and training starts over; one of other settings is refused
    (`foreign` "raise": a folder the user chose) or named in a warning and trained over
    ("restart": a results folder's scratch, whose unit must be computed whatever was there)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            files = {k: data[k] for k in data.files}
        meta = json.loads(files["meta"].tobytes().decode())
        saved_settings, epoch, saved_history = meta["settings"], meta["epoch"], meta["history"]
        if not (isinstance(saved_settings, str) and isinstance(epoch, int)
                and isinstance(saved_history, dict)):
            raise ValueError("its metadata is not (settings, epoch, history)")
    except Exception as err:  # noqa: BLE001 (any damage means: start over)
        warnings.warn(f"{path}: damaged training checkpoint ({type(err).__name__}: {err}); "
                      "training starts over", stacklevel=3)
        return None
    if saved_settings != settings_json:
        if foreign == "restart":
            warnings.warn(f"{path} is a checkpoint of other settings; training starts over "
                          "(it is replaced at the next checkpoint)", stacklevel=3)
            return None
        raise ValueError(f"{path} is a checkpoint of other settings; remove it or choose "
                         "another out folder")
    updates = []  # applied only once every array is read: a damaged file changes nothing
    try:
        for obj, prefix in ((model, "model"), (optimizer, "opt")):
            leaves, treedef = jax.tree.flatten(nnx.state(obj))
            # By state path; checkpoints written before that are in leaf order ("model_0", ...).
            names = ([f"{prefix}_{i}" for i in range(len(leaves))] if f"{prefix}_0" in files
                     else [f"{prefix}/{name}" for name, _ in _state_paths(obj)])
            new = []
            for name, leaf in zip(names, leaves):
                if name not in files:
                    raise ValueError(f"it has no array {name}")
                if files[name].shape != leaf.shape:
                    raise ValueError(f"{name} has shape {files[name].shape}, not {leaf.shape}")
                new.append(jnp.asarray(files[name], dtype=leaf.dtype))
            updates.append((obj, jax.tree.unflatten(treedef, new)))
        history = {k: np.asarray(v) for k, v in saved_history.items()}
    except (ValueError, TypeError) as err:
        warnings.warn(f"{path}: damaged training checkpoint ({err}); training starts over",
                      stacklevel=3)
        return None
    for obj, state in updates:
        nnx.update(obj, state)
    return epoch, history


def train(model: nnx.Module, data: _data.Dataset, settings: TrainSettings = TrainSettings(), *,
          out: str | Path | None = None, progress: bool | None = None, model_description: str = "",
          trainable: nnx.filterlib.Filter = nnx.Param, on_divergence: str = "raise",
          foreign_checkpoint: str = "raise") -> TrainResult:
    """Train `model` on `data` (a `ufm.nets.data.Dataset`), evaluating NC as it goes.
    `trainable`: an nnx filter of the parameters trained (default all; `ufm.nets.transfer`
    freezes all but a head and a chosen layer); the others stay bit for bit as they were.
    `on_divergence`: "raise" (FloatingPointError naming the epoch and train.lr) or "stop" (the
    result has status "diverged", diverged_at, and the history up to the last evaluation; no
    checkpoint of the broken state is written). `foreign_checkpoint`: what a checkpoint in
    `out` of other settings does: "raise" (ValueError) or "restart" (a warning; training starts
    over, as in a results folder's scratch).

    Example:
      >>> data = ufm.nets.data.load("digits")
      >>> model = ufm.nets.models.build("mlp", input_shape=data.input_shape, num_classes=10)
      >>> result = ufm.nets.train(model, data, ufm.nets.TrainSettings(epochs=50))
      >>> result.final["nc1"], result.final["train_acc"]
    """
    settings.check()
    if foreign_checkpoint not in ("raise", "restart"):
        raise ValueError(f"foreign_checkpoint={foreign_checkpoint!r} is not allowed: 'raise' or "
                         "'restart'")
    _data.check_classes(data)
    t0 = time.perf_counter()
    n = len(data.y_train)
    batch = min(settings.batch_size, n)
    steps_per_epoch = n // batch  # drop the last partial batch: one compiled step shape
    optimizer = nnx.Optimizer(model, _optimizer(settings, steps_per_epoch), wrt=trainable)
    run_epoch = make_train_epoch(settings, n, data.num_classes, trainable)
    settings_json = settings.to_json() + model_description
    history: dict = {}
    first_epoch = 1
    ckpt = None if out is None else Path(out) / CHECKPOINT
    if ckpt is not None:
        ckpt.parent.mkdir(parents=True, exist_ok=True)
        loaded = _load_checkpoint(ckpt, settings_json, model, optimizer, foreign_checkpoint)
        if loaded is not None:
            done, history = loaded
            first_epoch = done + 1
    bar = batching.progress_bar(progress, settings.epochs, "train")
    if bar is not None:
        bar.update(first_epoch - 1)
    if on_divergence not in ("raise", "stop"):
        raise ValueError(f"on_divergence={on_divergence!r} is not allowed: 'raise' or 'stop'")
    diverged_at = None
    x_all, y_all = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
    if first_epoch == 1:
        _record(history, 0, float("nan"), evaluate(model, data, settings.layer_samples))
    for epoch in range(first_epoch, settings.epochs + 1):
        order = np.random.default_rng((settings.seed, epoch)).permutation(n)
        # One gather per epoch, one compiled call for all its steps.
        take = jnp.asarray(order[:steps_per_epoch * batch].reshape(steps_per_epoch, batch))
        total_loss = float(jnp.sum(run_epoch(model, optimizer, x_all[take], y_all[take])))
        if not math.isfinite(total_loss):
            if on_divergence == "stop":
                diverged_at = epoch
                break
            raise FloatingPointError(f"training diverged at epoch {epoch} (loss {total_loss}); "
                                     f"lower train.lr={settings.lr}")
        if epoch % settings.eval_every == 0 or epoch == settings.epochs:
            _record(history, epoch, total_loss / steps_per_epoch,
                    evaluate(model, data, settings.layer_samples))
        if ckpt is not None and (
            epoch % settings.checkpoint_every == 0 or epoch == settings.epochs
        ):
            _save_checkpoint(ckpt, settings_json, epoch, model, optimizer, history)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{total_loss / steps_per_epoch:.3g}")
    if bar is not None:
        bar.close()
    history = {k: np.asarray(v) for k, v in history.items()}
    final = {k: v[-1] for k, v in history.items()}
    return TrainResult(model, history, final, time.perf_counter() - t0,
                       "finished" if diverged_at is None else "diverged", diverged_at)


def _record(history: dict, epoch: int, train_loss: float, evaluation: dict) -> None:
    def push(key, value):
        history[key] = list(history.get(key, [])) + [value]

    push("iteration", epoch)
    push("train_loss", train_loss)
    for key, value in evaluation.items():
        push(key, np.asarray(value).tolist() if key.endswith("_layers") else value)
