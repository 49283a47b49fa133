"""Networks whose last layer is the UFM: a body x -> h (the features) and a classifier head
z = W h + b, in flax NNX.

Heads (`HEADS`):
  "learned"  W (K x d) and b trained like any parameter.
  "etf"      W fixed to a simplex ETF (`ufm.analysis.theory.simplex_etf`, rows of norm 1; d >= K -
  1),
             never trained (Zhu et al. 2021, "fixed classifier"); b still learned if present.
  "cmf"      class-mean features: W is set during training to the running (EMA) class means of
             the features, centred by their mean, and receives no gradient.

`normalize=True` puts features (and the rows of a learned W) on the unit sphere: the sphere
geometry of the UFM, with the temperature applied by the loss.

Every model exposes `representations(x)` (the output of every layer of the body, the features
last), `features(x)` and `__call__(x)` (logits, shape (B, K)).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ufm.analysis import theory

HEADS = ("learned", "etf", "cmf")
MODELS = ("mlp", "resnet")


class Fixed(nnx.Variable):
    """A non-trainable array (the ETF classifier): not an `nnx.Param`, so no gradient and no
    optimizer state."""


class ClassMeans(nnx.Variable):
    """Running class means of the features (the CMF classifier); updated by the train step."""


def _module_list(modules):
    """A list of submodules NNX tracks (`nnx.List` where this flax has it)."""
    return nnx.List(modules) if hasattr(nnx, "List") else list(modules)


def _normalize_rows(X, eps=1e-12):
    return X / jnp.maximum(jnp.linalg.norm(X, axis=-1, keepdims=True), eps)


class Head(nnx.Module):
    """z = W h + b with W (K, d): learned, a fixed simplex ETF, or class-mean features."""

    def __init__(self, feature_dim: int, num_classes: int, *, kind: str = "learned",
                 bias: bool = True, normalize: bool = False, rngs: nnx.Rngs):
        if kind not in HEADS:
            raise ValueError(f"head={kind!r} is not allowed: one of {list(HEADS)}")
        if kind == "etf" and feature_dim < num_classes - 1:
            raise ValueError(f"head='etf' needs feature_dim >= num_classes - 1, got "
                             f"feature_dim={feature_dim}, num_classes={num_classes}")
        self.kind, self.normalize, self.num_classes = kind, normalize, num_classes
        if kind == "learned":
            init = jax.nn.initializers.lecun_normal()
            self.W = nnx.Param(init(rngs.params(), (num_classes, feature_dim)))
        elif kind == "etf":
            etf = np.asarray(theory.simplex_etf(num_classes, feature_dim), np.float32)  # (K, d)
            self.W = Fixed(jnp.asarray(etf))
        else:
            self.W = ClassMeans(jnp.zeros((num_classes, feature_dim)))  # centred means
            self.raw = ClassMeans(jnp.zeros((num_classes, feature_dim)))  # EMA class means
            self.seen = ClassMeans(jnp.zeros((num_classes,)))  # has class k been seen yet
        self.b = nnx.Param(jnp.zeros((num_classes,))) if bias else None

    def weight(self) -> jax.Array:
        """The classifier W (K, d) as used in the logits."""
        W = self.W[...]
        if self.kind == "cmf":
            W = jax.lax.stop_gradient(W)
        return _normalize_rows(W) if self.normalize else W

    def bias(self) -> jax.Array | None:
        return None if self.b is None else self.b[...]

    def __call__(self, h) -> jax.Array:
        z = h @ self.weight().T
        return z if self.b is None else z + self.b[...][None, :]

    def update_class_means(self, h: jax.Array, labels: jax.Array, momentum: float) -> None:
        """CMF: W <- centred EMA of the batch class means (classes absent from the batch keep
        their value; a class seen for the first time takes its batch mean)."""
        K = self.num_classes
        onehot = jax.nn.one_hot(labels, K, dtype=h.dtype)  # (B, K)
        counts = onehot.sum(0)
        batch_means = (onehot.T @ jax.lax.stop_gradient(h)) / jnp.maximum(counts, 1)[:, None]
        present = (counts > 0)[:, None]
        first = present & (self.seen[...][:, None] == 0)
        raw = self.raw[...]
        new = jnp.where(first, batch_means,
                        jnp.where(present, momentum * raw + (1 - momentum) * batch_means, raw))
        self.raw[...] = new
        self.seen[...] = jnp.maximum(self.seen[...], present[:, 0].astype(h.dtype))
        self.W[...] = new - new.mean(0, keepdims=True)


def parameter_counts(model: nnx.Module) -> dict:
    """Trainable parameters (`nnx.Param` entries): params_total, and params_classifier, the
    head's (W and b of a learned head; b alone for the fixed ETF and class-mean heads, whose W
    is not a parameter): the saving of a fixed ETF head (Zhu et al. 2021) in numbers."""
    count = lambda tree: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
    return {"params_total": count(nnx.state(model, nnx.Param)),
            "params_classifier": count(nnx.state(model.head, nnx.Param))}


class MLP(nnx.Module):
    """x (B, ...) flattened -> `depth` Linear+ReLU (optionally BatchNorm) layers of `width` ->
    head. With `feature_dim`, a Linear projection to that many features (no activation, like
    the ResNet's) follows: nonnegative ReLU features in as few as K dimensions leave a fixed ETF
    head little room (measured on the digits with d = K = 10: 82% train accuracy with a ReLU
    last layer)."""

    def __init__(self, in_features: int, num_classes: int, *, width: int = 256, depth: int = 3,
                 feature_dim: int | None = None, head: str = "learned", bias: bool = True,
                 normalize: bool = False, batchnorm: bool = False, rngs: nnx.Rngs):
        if depth < 1:
            raise ValueError(f"depth={depth!r} is not allowed: an integer >= 1")
        dims = [in_features] + [width] * depth
        self.layers = _module_list([nnx.Linear(a, b, rngs=rngs) for a, b in zip(dims, dims[1:])])
        self.norms = (_module_list([nnx.BatchNorm(b, rngs=rngs) for b in dims[1:]])
                      if batchnorm else None)
        self.project = nnx.Linear(width, feature_dim, rngs=rngs) if feature_dim else None
        self.normalize = normalize
        self.head = Head(feature_dim or width, num_classes, kind=head, bias=bias,
                         normalize=normalize, rngs=rngs)

    def representations(self, x: jax.Array) -> list:
        h = x.reshape(x.shape[0], -1)
        out = []
        for i, layer in enumerate(self.layers):
            h = layer(h)
            if self.norms is not None:
                h = self.norms[i](h)
            h = jax.nn.relu(h)
            out.append(h)
        if self.project is not None:
            out.append(self.project(h))
        if self.normalize:
            out[-1] = _normalize_rows(out[-1])
        return out

    def features(self, x: jax.Array) -> jax.Array:
        return self.representations(x)[-1]

    def __call__(self, x) -> jax.Array:
        return self.head(self.features(x))

    def layer_paths(self) -> list[tuple]:
        """For each entry of `representations`, the path prefixes of the parameters that
        produce it (what fine-tuning "layer j" trains)."""
        paths = [(("layers", i),) + ((("norms", i),) if self.norms is not None else ())
                 for i in range(len(self.layers))]
        return paths + ([(("project",),)] if self.project is not None else [])


class _Block(nnx.Module):
    """Basic residual block: conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv when the shape
    changes), ReLU."""

    def __init__(self, cin, cout, stride, rngs):
        self.conv1 = nnx.Conv(cin, cout, (3, 3), strides=stride, padding="SAME", use_bias=False,
                              rngs=rngs)
        self.bn1 = nnx.BatchNorm(cout, rngs=rngs)
        self.conv2 = nnx.Conv(cout, cout, (3, 3), padding="SAME", use_bias=False, rngs=rngs)
        self.bn2 = nnx.BatchNorm(cout, rngs=rngs)
        self.short = (nnx.Conv(cin, cout, (1, 1), strides=stride, use_bias=False, rngs=rngs)
                      if stride != 1 or cin != cout else None)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return jax.nn.relu(y + (x if self.short is None else self.short(x)))


class ResNet(nnx.Module):
    """A small ResNet for 32x32 images (He et al. 2016, the CIFAR family): a 3x3 stem of `width`
    channels, three stages of `blocks` basic blocks with width, 2 width, 4 width channels
    (strides 1, 2, 2), global average pooling, then a Linear to `feature_dim` if given.
    Inputs (B, H, W, C)."""

    def __init__(self, in_channels: int, num_classes: int, *, width: int = 16, blocks: int = 2,
                 feature_dim: int | None = None, head: str = "learned", bias: bool = True,
                 normalize: bool = False, rngs: nnx.Rngs):
        self.stem = nnx.Conv(in_channels, width, (3, 3), padding="SAME", use_bias=False,
                             rngs=rngs)
        self.stem_bn = nnx.BatchNorm(width, rngs=rngs)
        stages, cin = [], width
        for s, cout in enumerate((width, 2 * width, 4 * width)):
            stage = []
            for j in range(blocks):
                stage.append(_Block(cin, cout, 2 if (s > 0 and j == 0) else 1, rngs))
                cin = cout
            stages.append(_module_list(stage))
        self.stages = _module_list(stages)
        self.project = nnx.Linear(cin, feature_dim, rngs=rngs) if feature_dim else None
        self.normalize = normalize
        self.head = Head(feature_dim or cin, num_classes, kind=head, bias=bias,
                         normalize=normalize, rngs=rngs)

    def representations(self, x: jax.Array) -> list:
        h = jax.nn.relu(self.stem_bn(self.stem(x)))
        out = [h]
        for stage in self.stages:
            for block in stage:
                h = block(h)
            out.append(h)
        h = h.mean(axis=(1, 2))
        if self.project is not None:
            h = self.project(h)
        out.append(_normalize_rows(h) if self.normalize else h)
        return out

    def features(self, x: jax.Array) -> jax.Array:
        return self.representations(x)[-1]

    def __call__(self, x) -> jax.Array:
        return self.head(self.features(x))

    def layer_paths(self) -> list[tuple]:
        """For each entry of `representations`, the path prefixes of the parameters that
        produce it: the stem, each stage, and the projection (or, without one, the last stage,
        whose output is pooled)."""
        stages = [(("stages", s),) for s in range(len(self.stages))]
        last = ((("project",),) if self.project is not None else stages[-1])
        return [(("stem",), ("stem_bn",))] + stages + [last]


def build(name: str, *, input_shape: tuple, num_classes: int, seed: int = 0,
          **options) -> nnx.Module:
    """A model by name ("mlp" | "resnet") for inputs of `input_shape` (one sample's shape), its
    parameters drawn from `seed`. The options (the net kind's [model] keys):

      width        MLP: the hidden width (default 256); ResNet: the first stage's channels
                   (default 16; the stages have width, 2 width, 4 width)
      depth        MLP only: hidden Linear+ReLU layers (default 3)
      blocks       ResNet only: basic blocks per stage (default 2)
      batchnorm    MLP only: BatchNorm after each hidden Linear (default False; the ResNet
                   always has it)
      feature_dim  d: a Linear projection of the body's output to d features, no activation
                   (default None: the body's width)
      head         the classifier, one of `HEADS` (default "learned"; "etf" needs d >= K - 1)
      bias         the head's bias b (default True)
      normalize    features and a learned head's rows on the unit sphere (default False)

    An option the model does not take is a TypeError naming it.

    Example:
      >>> model = build("mlp", input_shape=(64,), num_classes=10, width=128, depth=2,
      ...               feature_dim=10, head="etf")
    """
    rngs = nnx.Rngs(seed)
    if name == "mlp":
        return MLP(int(np.prod(input_shape)), num_classes, rngs=rngs, **options)
    if name == "resnet":
        if len(input_shape) != 3:
            raise ValueError(f"model='resnet' needs image inputs (H, W, C), got input shape "
                             f"{tuple(input_shape)}")
        return ResNet(input_shape[-1], num_classes, rngs=rngs, **options)
    raise ValueError(f"model={name!r} is not allowed: one of {list(MODELS)}")
