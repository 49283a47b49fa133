"""Progressive separation as a law: NC1 falls by a constant ratio per layer.

He & Su (2023, "A law of data separation in deep learning") observed that in a well-trained
network the within-class variability of layer l, NC1_l, decays geometrically: log NC1_l is a
line in l. This script trains MLPs of several depths on the bundled digits, fits
log NC1_l = a + l log(ratio) (`ufm.analysis.layerwise.geometric_decay`: ratio per layer, R^2) on
the
training split and the test split, reports the layer-wise NC2 (class means against the simplex
ETF) and NC3 (each layer's ridge-probe classifier against its class means), and puts the deep
UFM's layer-wise NC1 (free features, then L - 1 trained layers) beside them.

    python experiments/progressive_separation.py                 # ~3 min on 2 cores
    python experiments/progressive_separation.py --quick --out DIR

Writes DIR/progressive_separation.csv (one row per network or deep UFM: depth, fitted ratio,
rate, R^2, accuracies) and DIR/progressive_separation.png.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import ufm  # noqa: E402
from ufm import nets
from ufm.analysis import layerwise  # noqa: E402
from ufm.nets.data import stratified_subset  # noqa: E402
from ufm.nets.training import layer_nc3  # noqa: E402


def networks(depths, epochs: int) -> list[dict]:
    data = nets.data.load("digits")
    rows = []
    for depth in depths:
        model = nets.models.build("mlp", input_shape=data.input_shape, num_classes=10,
                                  width=128, depth=depth)
        result = nets.train(model, data, nets.TrainSettings(epochs=epochs,
                                                            eval_every=max(1, epochs)),
                            progress=False)
        final = result.final
        take = stratified_subset(data.y_train, 1000, 10)
        row = {"model": "mlp", "depth": depth, "status": "trained",
               "train_acc": final["train_acc"],
               "test_acc": final["test_acc"], "nc1_layers": final["train_nc1_layers"],
               "test_nc1_layers": final["test_nc1_layers"], "nc2_layers": final["nc2_layers"],
               "nc3_layers": layer_nc3(model, data.x_train[take], data.y_train[take], 10)}
        rows.append(row)
    return rows


def deep_ufms(depths, steps: int) -> list[dict]:
    rows = []
    for depth in depths:
        prob = ufm.Problem(num_classes=10, feature_dim=16, n_per_class=10, depth=depth,
                           activation="relu", loss="ce")
        res = ufm.solve(prob, ufm.Hyper(lam_W=1e-3, lam_H=1e-3, lam_b=1e-3, lr=0.2),
                        steps=steps, log_every=steps)
        layers = np.array([res.history[f"nc1_layer{j}"][-1] for j in range(depth)])
        rows.append({"model": "deep UFM (relu)", "depth": depth, "train_acc": np.nan,
                     "test_acc": np.nan, "nc1_layers": layers, "status": res.status})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings (the tests)")
    parser.add_argument("--out", default="runs/progressive_separation")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    nets_rows = networks([2, 4] if args.quick else [2, 4, 6, 8], 8 if args.quick else 300)
    ufm_rows = deep_ufms([2, 3] if args.quick else [2, 3, 4, 6], 300 if args.quick else 20000)
    table = []
    for row in nets_rows + ufm_rows:
        fit = layerwise.geometric_decay(row["nc1_layers"])
        test_fit = (layerwise.geometric_decay(row["test_nc1_layers"])
                    if "test_nc1_layers" in row else {"ratio": np.nan, "r2": np.nan})
        row.update(ratio=fit["ratio"], rate=fit["rate"], r2=fit["r2"], fit=fit,
                   test_ratio=test_fit["ratio"], test_r2=test_fit["r2"])
        table.append({k: row[k] for k in ("model", "depth", "ratio", "rate", "r2",
                                          "test_ratio", "test_r2", "train_acc", "test_acc",
                                          "status")})
    with open(out / "progressive_separation.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    print(f"{'model':16s} {'depth':>5s} {'ratio/layer':>11s} {'R^2':>7s} {'test ratio':>10s} "
          f"{'test R^2':>8s} {'test acc':>8s}  status")
    for r in table:
        print(f"{r['model']:16s} {r['depth']:5d} {r['ratio']:11.3f} {r['r2']:7.4f} "
              f"{r['test_ratio']:10.3f} {r['test_r2']:8.4f} {r['test_acc']:8.3f}  {r['status']}")

    fig, axes = plt.subplots(1, 3, figsize=(15, 3.9), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for color, row in zip(colors, nets_rows):
        layer = np.arange(len(row["nc1_layers"]))
        axes[0].semilogy(layer + 1, row["nc1_layers"], "o", color=color,
                         label=f"depth {row['depth']}: x{row['ratio']:.3f}/layer, "
                               f"R² {row['r2']:.3f}")
        axes[0].semilogy(layer + 1, np.exp(row["fit"]["intercept"]) * row["ratio"] ** layer,
                         "-", color=color, lw=1)
        axes[1].plot(layer + 1, row["nc2_layers"], "o-", color=color,
                     label=f"NC2, depth {row['depth']}")
        axes[1].plot(layer + 1, row["nc3_layers"], "s--", color=color, ms=4,
                     label=f"NC3, depth {row['depth']}")
    for color, row in zip(colors, ufm_rows):
        layer = np.arange(len(row["nc1_layers"]))
        axes[2].semilogy(layer, row["nc1_layers"], "o", color=color,
                         label=f"L = {row['depth']}: x{row['ratio']:.3g}/layer, "
                               f"R² {row['r2']:.3f}")
        axes[2].semilogy(layer, np.exp(row["fit"]["intercept"]) * row["ratio"] ** layer, "-",
                         color=color, lw=1)
    axes[0].set_title("MLPs on the digits: NC1 per hidden layer, fitted lines", fontsize=10)
    axes[0].set_xlabel("hidden layer")
    axes[1].set_title("NC2 (class means) and NC3 (probe vs means) per layer", fontsize=10)
    axes[1].set_xlabel("hidden layer")
    axes[2].set_title("deep UFM (ReLU, K = 10, d = 16): NC1 per layer", fontsize=10)
    axes[2].set_xlabel("layer (0: the free features)")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.savefig(out / "progressive_separation.png", dpi=90)
    print(f"{time.perf_counter() - t0:.1f} s; {out / 'progressive_separation.csv'}, "
          f"{out / 'progressive_separation.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
