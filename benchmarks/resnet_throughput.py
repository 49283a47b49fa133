"""Training throughput of the flax path's ResNet (images per second) on synthetic data of
CIFAR-10's size (50,000 images of 32x32x3, 10 classes; nothing can be downloaded), with the
training step `ufm.nets` uses (CE, momentum SGD, weight decay, the UFM penalties).

    python benchmarks/resnet_throughput.py [--steps 50] [--widths 16 64] [--batches 128 512]
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ufm import nets
from ufm.nets.training import TrainSettings, _optimizer, make_train_step


def throughput(width: int, blocks: int, batch: int, steps: int, n_images: int = 50_000) -> float:
    data = nets.data.gaussian(num_classes=10, n_train=n_images // 10, n_test=1, shape=(32, 32, 3))
    model = nets.models.build("resnet", input_shape=(32, 32, 3), num_classes=10, width=width,
                              blocks=blocks)
    settings = TrainSettings(batch_size=batch, epochs=1)
    optimizer = nnx.Optimizer(model, _optimizer(settings, n_images // batch), wrt=nnx.Param)
    step = make_train_step(settings, n_images, 10)
    x = jax.device_put(jnp.asarray(data.x_train))
    y = jax.device_put(jnp.asarray(data.y_train))
    order = np.random.default_rng(0).permutation(n_images)

    def run(k0, count):
        loss = None
        for k in range(k0, k0 + count):
            idx = order[(k * batch) % (n_images - batch):][:batch]
            loss, _ = step(model, optimizer, x[idx], y[idx])
        jax.block_until_ready(loss)

    run(0, 3)  # compile and warm up
    t0 = time.perf_counter()
    run(3, steps)
    return steps * batch / (time.perf_counter() - t0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--widths", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--blocks", type=int, default=2)
    parser.add_argument("--batches", type=int, nargs="+", default=[128, 512])
    args = parser.parse_args()
    device = jax.devices()[0]
    print(f"device: {getattr(device, 'device_kind', device)} ({device.platform}); ResNet "
          f"(3 stages of {args.blocks} basic blocks), float32, synthetic 32x32x3, 10 classes")
    print(f"{'width':>5} {'params':>9} {'batch':>5} {'images/s':>10}")
    for width in args.widths:
        model = nets.models.build("resnet", input_shape=(32, 32, 3), num_classes=10,
                                  width=width, blocks=args.blocks)
        n_params = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        for batch in args.batches:
            rate = throughput(width, args.blocks, batch, args.steps)
            print(f"{width:>5} {n_params:>9,} {batch:>5} {rate:10.0f}", flush=True)


if __name__ == "__main__":
    main()
