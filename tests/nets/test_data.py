"""`ufm.nets.data`: the bundled and standard-format readers, missing files named, the variants and
stratified subsets."""
import gzip
import pickle

import numpy as np
import pytest

from ufm.nets import data as nets_data


def _write_idx(path, array, gz=False):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(s).to_bytes(4, "big")
                                                         for s in array.shape)
    opener = gzip.open if gz else open
    with opener(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_missing_dataset_files_are_named(tmp_path):
    with pytest.raises(nets_data.DatasetFilesMissing, match="train-images-idx3-ubyte"):
        nets_data.load("mnist", path=tmp_path)
    with pytest.raises(nets_data.DatasetFilesMissing, match="data_batch_1"):
        nets_data.load("cifar10", path=tmp_path)
    with pytest.raises(ValueError, match="needs data.path"):
        nets_data.load("cifar10")
    with pytest.raises(ValueError, match="data.name='svhn' is not allowed"):
        nets_data.load("svhn")


def test_mnist_and_cifar_readers_read_the_standard_formats(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 28, 28))
    labels = np.arange(20) % 10
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, gz=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", labels)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte", images[:10])
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels[:10])
    mnist = nets_data.load("mnist", path=tmp_path)
    assert mnist.x_train.shape == (20, 784) and mnist.x_test.shape == (10, 784)
    np.testing.assert_array_equal(mnist.y_train, labels)
    np.testing.assert_allclose(nets_data.read_idx(tmp_path / "train-images-idx3-ubyte.gz"), images)
    pixels = rng.integers(0, 256, (20, 3 * 32 * 32), dtype=np.uint8)
    for name in nets_data.CIFAR_FILES:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": pixels, b"labels": list(range(10)) * 2}, f)
    cifar = nets_data.load("cifar10", path=tmp_path)
    assert cifar.x_train.shape == (100, 32, 32, 3) and cifar.x_test.shape == (20, 32, 32, 3)
    # Channel-last from CIFAR's channel-first rows: the red plane is the first 1024 bytes.
    red = cifar.x_train[:20, :, :, 0].reshape(20, -1)
    assert np.corrcoef(red.ravel(), pixels[:, :1024].astype(float).ravel())[0, 1] > 0.9999


def test_variants():
    base = nets_data.load("digits")
    shuffled = nets_data.load("digits", variant="random_labels")
    assert np.mean(shuffled.y_train == base.y_train) < 0.2
    np.testing.assert_array_equal(shuffled.y_test, base.y_test)  # the test split is untouched
    noise = nets_data.load("digits", variant="random_inputs")
    assert noise.x_train.shape == base.x_train.shape
    assert abs(np.corrcoef(noise.x_train.ravel(), base.x_train.ravel())[0, 1]) < 0.05


def test_stratified_subset_takes_the_first_samples_of_every_class():
    y = np.array([2, 0, 1, 0, 2, 1, 0, 2, 1, 1])
    take = nets_data.stratified_subset(y, 6, 3)
    np.testing.assert_array_equal(take, [0, 1, 2, 3, 4, 5])  # two of each, in order
    np.testing.assert_array_equal(np.bincount(y[take]), [2, 2, 2])
    assert len(nets_data.stratified_subset(y, 1, 3)) == 3  # at least one of each class


def _blobs(path, K=3, d=5, n=30, offset=1.0, ood=False, **extra):
    """Gaussian blobs whose inputs are far from standardized (mean |x| of a few units)."""
    rng = np.random.default_rng(0)
    means = rng.normal(size=(K, d)) * 3.0 + offset

    def draw(m):
        y = np.repeat(np.arange(K), m)
        return means[y] + rng.normal(size=(K * m, d)), y

    arrays = dict(zip(("x_train", "y_train"), draw(n)), **dict(zip(("x_test", "y_test"),
                                                                  draw(n // 3))))
    if ood:
        arrays.update(zip(("x_ood", "y_ood"), draw(5)))
    arrays.update(extra)
    np.savez(path, **arrays)
    return arrays


def test_arrays_read_the_users_file_standardized_by_the_training_split(tmp_path):
    raw = _blobs(tmp_path / "blobs.npz", ood=True)
    data = nets_data.load("arrays", path=tmp_path / "blobs.npz")
    assert data.num_classes == 3 and data.x_train.dtype == np.float32 and data.ood == "file"
    np.testing.assert_allclose(data.x_train.mean(0), 0.0, atol=1e-5)
    np.testing.assert_allclose(data.x_train.std(0), 1.0, atol=1e-5)
    mean, std = raw["x_train"].mean(0), raw["x_train"].std(0)
    for split in ("test", "ood"):  # the training split's map, every split alike
        np.testing.assert_allclose(getattr(data, f"x_{split}"),
                                   (raw[f"x_{split}"] - mean) / std, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(getattr(data, f"y_{split}"), raw[f"y_{split}"])
    kept = nets_data.load("arrays", path=tmp_path / "blobs.npz", standardize=False)
    np.testing.assert_allclose(kept.x_train, raw["x_train"], rtol=1e-6)
    # A feature constant on the training split is only shifted.
    constant = dict(raw, x_train=np.concatenate([raw["x_train"][:, :4],
                                                 np.full((len(raw["y_train"]), 1), 7.0)], 1),
                    x_test=raw["x_test"], x_ood=raw["x_ood"])
    constant["x_test"] = constant["x_test"].copy()
    constant["x_test"][:, 4] = 8.0
    constant["x_ood"] = constant["x_ood"].copy()
    constant["x_ood"][:, 4] = 7.0
    np.savez(tmp_path / "c.npz", **constant)
    shifted = nets_data.load("arrays", path=tmp_path / "c.npz")
    assert (shifted.x_train[:, 4] == 0).all() and (shifted.x_test[:, 4] == 1).all()


@pytest.mark.parametrize("change, message", [
    ({"y_test": None}, "needs x_train, y_train, x_test, y_test"),
    ({"x_ood": np.zeros((3, 5))}, "x_ood with y_ood, or neither"),
    ({"y_train": np.zeros(90)}, "labels are integers"),
    ({"x_test": np.zeros((10, 4))}, "samples of shape"),
    ({"x_train": np.full((90, 5), np.nan)}, "non-finite"),
    ({"x_train": np.array([{"a": 1}] * 90, dtype=object)}, "not a readable .npz"),
])
def test_a_bad_arrays_file_is_named_with_what_is_wrong(tmp_path, change, message):
    raw = _blobs(tmp_path / "ok.npz")
    raw.update(change)
    arrays = {k: v for k, v in raw.items() if v is not None}
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(nets_data.InputError, match=message):
        nets_data.load("arrays", path=tmp_path / "bad.npz")
    with pytest.raises(nets_data.InputError, match="does not exist"):
        nets_data.load("arrays", path=tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="needs data.path"):
        nets_data.load("arrays")
