"""Datasets for the flax path; nothing is downloaded.

  "digits"    scikit-learn's bundled handwritten digits (1,797 8x8 images, 10 classes): the
              default that runs anywhere. Standardized; a fixed stratified 80/20 split.
  "mnist"     the four IDX files a user already has (train-images-idx3-ubyte, ...; .gz or
              not) in `path`.
  "cifar10"   the python-pickle batches (data_batch_1..5, test_batch) in `path` (the folder
              cifar-10-batches-py).
  "gaussian"  a synthetic Gaussian mixture: K class means on a sphere of radius `separation`,
              unit-variance noise, inputs of any `shape` (e.g. (32, 32, 3) for the ResNet).
  "arrays"    the user's own data: one .npz file at `path` holding x_train, y_train, x_test,
              y_test (inputs of any shape, integer labels 0..K-1) and optionally x_ood, y_ood;
              read without pickle. Standardized by default (`arrays(standardize=True)`: each
              input feature by the training split's mean and standard deviation, every split
              alike): raw inputs of a few units' scale make the default learning rate diverge.

Variants (the seed's random-label experiments, Zhang et al. 2017): "random_labels" replaces
the training labels by uniformly random ones (fixed by the seed); "random_inputs" replaces the
training inputs by Gaussian noise of the same mean and scale.

Out-of-distribution splits (`ood`, `shift`): the test split moved by a shift, kept as x_ood,
y_ood next to train and test, so NC and accuracy can be measured on all three:
  "rotation"  every test image rotated by `strength` degrees (default 30; bilinear, edges
              extended), on the standardized images (digits and MNIST flattened images are
              reshaped to their squares)
  "noise"     Gaussian noise of standard deviation `strength` (default 1.0, in units of the
              standardized inputs) added to every test input
  "contrast"  every standardized test input scaled by `strength` (default 0.5)
  "cifar10.1" / "cifar10.2"  the user's CIFAR-10.1 (v6: cifar10.1_v6_data.npy,
              cifar10.1_v6_labels.npy) or CIFAR-10.2 (cifar102_test.npz) test files, in the
              CIFAR-10 folder `path`, standardized like CIFAR-10's training set
"""
from __future__ import annotations

import gzip
import io
import pickle
import pickletools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ufm.errors import InputError

DATASETS = ("digits", "mnist", "cifar10", "gaussian", "arrays")
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
SHIFTS = ("none", "rotation", "noise", "contrast", "cifar10.1", "cifar10.2")
SHIFT_STRENGTHS = {"rotation": 30.0, "noise": 1.0, "contrast": 0.5}
CIFAR_SHIFT_FILES = {"cifar10.1": ("cifar10.1_v6_data.npy", "cifar10.1_v6_labels.npy"),
                     "cifar10.2": ("cifar102_test.npz",)}
VARIANTS = ("none", "random_labels", "random_inputs")
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


class Dataset(NamedTuple):
    """Train and test arrays (inputs float32 (N, ...), labels int32 (N,)), the class count, and
    optionally an out-of-distribution split (`ood` names its shift; "" when there is none)."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    x_ood: np.ndarray | None = None
    y_ood: np.ndarray | None = None
    ood: str = ""

    def splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(name, x, y) of every split present: train, test and ood."""
        out = [("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)]
        if self.x_ood is not None:
            out.append(("ood", self.x_ood, self.y_ood))
        return out

    @property
    def input_shape(self) -> tuple:
        return self.x_train.shape[1:]


class DatasetFilesMissing(InputError, FileNotFoundError):
    """The files of a dataset the user must provide are not where they were looked for."""


def stratified_subset(y: np.ndarray, n: int, num_classes: int) -> np.ndarray:
    """Sorted indices of about `n` samples, the first max(1, n // K) of each class in order
    (every class represented, the same subset on every call): the samples on which per-layer
    metrics are measured."""
    per = max(1, n // num_classes)
    return np.sort(np.concatenate([np.flatnonzero(y == k)[:per] for k in range(num_classes)]))


def check_classes(data: Dataset) -> Dataset:
    """`data` if every split (train, test, ood) has as many labels as inputs, labels in
    0..num_classes-1, and at least one sample of every class (the NC metrics average class
    means, so a missing class would fail only after training); an InputError naming the split
    and the classes otherwise."""
    K = data.num_classes
    for split, x, y in data.splits():
        y = np.asarray(y)
        if len(x) != len(y):
            raise InputError(f"dataset {data.name!r}: the {split} split has {len(x)} inputs "
                             f"and {len(y)} labels")
        if y.dtype.kind not in "iu":
            raise InputError(f"dataset {data.name!r}: the {split} labels are {y.dtype}, not "
                             "integers")
        outside = np.unique(y[(y < 0) | (y >= K)])
        if outside.size:
            raise InputError(f"dataset {data.name!r}: the {split} split has labels "
                             f"{outside[:10].tolist()} outside 0..{K - 1}")
        absent = np.flatnonzero(np.bincount(y, minlength=K) == 0)
        if absent.size:
            raise InputError(f"dataset {data.name!r}: the {split} split has no sample of "
                             f"class{'es' if absent.size > 1 else ''} "
                             f"{absent[:10].tolist()}{' ...' if absent.size > 10 else ''} of "
                             f"0..{K - 1}; every class must be in every split (the NC metrics "
                             "use each class's mean)")
    return data


def _split(x, y, test_fraction, seed):
    """Stratified split, the same for a given seed."""
    rng = np.random.default_rng(seed)
    test = np.zeros(len(y), bool)
    for k in np.unique(y):
        idx = np.flatnonzero(y == k)
        test[rng.permutation(idx)[:int(round(test_fraction * len(idx)))]] = True
    return x[~test], y[~test], x[test], y[test]


def _standardize(x_train, x_test):
    mean, std = x_train.mean(0), x_train.std(0)
    std = np.where(std > 0, std, 1.0)
    return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


def arrays(path: str | Path, standardize: bool = True) -> Dataset:
    """The user's data from one .npz file (see the module docstring): x_train, y_train, x_test,
    y_test and optionally x_ood, y_ood; K is the largest label + 1. `standardize`: each input
    feature shifted and scaled by the training split's mean and standard deviation (features
    constant on the training split are only shifted), the same map on every split."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"data.path={str(path)!r} is not allowed: an .npz file with "
                         f"{', '.join(ARRAY_KEYS)} (and optionally x_ood, y_ood); it does not "
                         "exist")
    try:
        with np.load(path, allow_pickle=False) as archive:  # data files never execute code
            found = {k: archive[k] for k in archive.files}
    except Exception as err:  # noqa: BLE001 (not an archive, damaged, object arrays)
        raise InputError(f"{path}: not a readable .npz of numeric arrays "
                         f"({type(err).__name__}: {err})") from None
    missing = [k for k in ARRAY_KEYS if k not in found]
    if missing or ("x_ood" in found) != ("y_ood" in found):
        raise InputError(f"{path}: holds {sorted(found)}; an arrays dataset needs "
                         f"{', '.join(ARRAY_KEYS)} (and x_ood with y_ood, or neither)")
    splits = [("train", "x_train", "y_train"), ("test", "x_test", "y_test")]
    if "x_ood" in found:
        splits.append(("ood", "x_ood", "y_ood"))
    inputs = {}
    for split, xk, yk in splits:
        x, y = found[xk], found[yk]
        if x.dtype.kind not in "biuf" or x.ndim < 2:
            raise InputError(f"{path}: {xk} is {x.dtype} of shape {x.shape}; inputs are numbers, "
                             "one sample per row (N, ...)")
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise InputError(f"{path}: {yk} is {y.dtype} of shape {y.shape}; labels are "
                             "integers, one per sample (N,)")
        if x.shape[1:] != found["x_train"].shape[1:]:
            raise InputError(f"{path}: {xk} has samples of shape {x.shape[1:]}, x_train "
                             f"{found['x_train'].shape[1:]}; every split alike")
        x = x.astype(np.float32)
        if not np.isfinite(x).all():
            raise InputError(f"{path}: {xk} holds non-finite values (NaN or inf)")
        inputs[split] = x
    if standardize:
        mean = inputs["train"].mean(0)
        std = inputs["train"].std(0)
        std = np.where(std > 0, std, 1.0)
        inputs = {s: ((x - mean) / std).astype(np.float32) for s, x in inputs.items()}
    labels = {s: found[yk].astype(np.int32) for s, _, yk in splits}
    K = int(max(int(y.max(initial=-1)) for y in labels.values())) + 1
    if K < 2:
        raise InputError(f"{path}: the labels name {K} class; at least 2 are needed")
    return Dataset("arrays", inputs["train"], labels["train"], inputs["test"], labels["test"],
                   K, inputs.get("ood"), labels.get("ood"), "file" if "ood" in inputs else "")


def digits(seed: int = 0, image: bool = False) -> Dataset:
    """scikit-learn's digits, standardized per pixel; (N, 64), or (N, 8, 8, 1) with image."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float64)
    x = x[..., None] if image else x.reshape(len(x), -1)
    x_tr, y_tr, x_te, y_te = _split(x, bunch.target.astype(np.int32), 0.2, seed)
    x_tr, x_te = _standardize(x_tr, x_te)
    return Dataset("digits", x_tr, y_tr, x_te, y_te, 10)


def _find(path: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz", stem.replace("-idx", ".idx")):
        if (path / name).is_file():
            return path / name
    return None


def read_idx(file: Path) -> np.ndarray:
    """An IDX file (MNIST's format: magic 0x00000803 / 0x00000801, big-endian sizes)."""
    opener = gzip.open if str(file).endswith(".gz") else open
    with opener(file, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise ValueError(f"{file} is not an unsigned-byte IDX file (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{file}: header says shape {shape} but holds {array.size} bytes")
    return array.reshape(shape)


def mnist(path: str | Path, image: bool = False) -> Dataset:
    """MNIST (or Fashion-MNIST) from its four IDX files in `path`."""
    path = Path(path).expanduser()
    files = [_find(path, stem) for stem in MNIST_FILES]
    if any(f is None for f in files):
        missing = [s for s, f in zip(MNIST_FILES, files) if f is None]
        raise DatasetFilesMissing(
            f"dataset 'mnist' needs the IDX files {list(MNIST_FILES)} (optionally .gz) in "
            f"{path}; missing: {missing}. ufm downloads nothing: copy them there or set "
            "data.path")
    x_tr, y_tr, x_te, y_te = (read_idx(f) for f in files)
    x_tr, x_te = (x.astype(np.float32) / 255.0 for x in (x_tr, x_te))
    if image:
        x_tr, x_te = x_tr[..., None], x_te[..., None]
    else:
        x_tr, x_te = x_tr.reshape(len(x_tr), -1), x_te.reshape(len(x_te), -1)
    x_tr, x_te = _standardize(x_tr, x_te)
    return Dataset("mnist", x_tr, y_tr.astype(np.int32), x_te, y_te.astype(np.int32), 10)


# A CIFAR-10 python batch is about 31 MB (10,000 images) and its pickle a few tens of thousands
# of opcodes; a file larger than this, or with more opcodes, is not one (and each opcode builds
# at most one small object, so these two bounds bound the memory of what is unpickled).
MAX_BATCH_BYTES = 128 * 2**20
MAX_BATCH_OPCODES = 1_000_000
CIFAR_IMAGE_BYTES = 3 * 32 * 32
CIFAR_CLASSES = 10


class _BatchNotReadable(Exception):
    """Why a file is not a CIFAR-10 batch; `_cifar_batch` names the file."""


class _NdarrayClass:
    """What the name numpy.ndarray stands for inside a batch: a marker, never the class, so a
    file cannot call ndarray(shape) to allocate."""

    def __new__(cls, *args, **kwargs):
        raise _BatchNotReadable("numpy.ndarray called directly (numpy pickles call "
                                "_reconstruct)")


class _PendingDtype:
    """numpy.dtype(code, align, copy) as a pickle builds it, made real only after its state
    is checked: a plain numeric type, no fields, no subarray (numpy's own __setstate__ is
    not given hostile state)."""

    def __init__(self, code, align=False, copy=True):
        code = code.decode("latin1") if isinstance(code, bytes) else code
        if not isinstance(code, str) or code[:1] not in "biuf" or not code[1:].isdigit():
            raise _BatchNotReadable(f"dtype {code!r} is not a numeric type")
        self.code, self.value = code, np.dtype(code)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) >= 5 and state[1] in "<>|="
                and state[2] is None and state[3] is None and state[4] is None):
            raise _BatchNotReadable("a dtype with fields or a subarray")
        self.value = self.value.newbyteorder(state[1]) if state[1] in "<>" else self.value


def _dtype_of(value) -> np.dtype:
    if isinstance(value, _PendingDtype):
        return value.value
    if isinstance(value, (str, bytes)):
        return _PendingDtype(value).value
    raise _BatchNotReadable(f"{type(value).__name__} given where a dtype belongs")


class _PendingArray:
    """numpy's _reconstruct(ndarray, shape, dtype) as a pickle calls it: nothing is allocated
    until the state arrives, and then only an array whose bytes are in the file (numpy's own
    __setstate__ trusts the shape: an object array with a short list crashes the process)."""

    array = None

    def __init__(self, subtype, shape, dtype):
        if subtype is not _NdarrayClass:
            raise _BatchNotReadable("_reconstruct of something other than numpy.ndarray")

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise _BatchNotReadable("an array state that is not numpy's")
        shape, dtype, fortran, raw = state[-4:]
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            raise _BatchNotReadable(f"array shape {shape!r}")
        dtype = _dtype_of(dtype)
        if not isinstance(raw, bytes) or len(raw) != int(np.prod(shape)) * dtype.itemsize:
            raise _BatchNotReadable(f"array of shape {shape} whose data is not its "
                                    f"{int(np.prod(shape)) * dtype.itemsize} bytes")
        self.array = np.frombuffer(raw, dtype).reshape(shape, order="F" if fortran else "C")


def _scalar(dtype, raw):
    dtype = _dtype_of(dtype)
    if not isinstance(raw, bytes) or len(raw) != dtype.itemsize:
        raise _BatchNotReadable(f"a {dtype} scalar of {len(raw)} bytes")
    return np.frombuffer(raw, dtype)[0]


def _latin1(text, encoding="latin1"):
    """_codecs.encode as numpy's protocol-2 pickles use it: str to bytes, latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _BatchNotReadable(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR-10 python batch holds (dicts, lists, bytes, ints and numpy
    arrays of numbers), each through a checked stand-in: a crafted file cannot run code (the
    standard unpickler calls any function a file names) nor make numpy allocate or crash."""

    ALLOWED = {("numpy", "ndarray"): _NdarrayClass, ("numpy", "dtype"): _PendingDtype,
               ("_codecs", "encode"): _latin1}
    for _core in ("numpy.core.multiarray", "numpy._core.multiarray"):
        ALLOWED[(_core, "_reconstruct")] = _PendingArray
        ALLOWED[(_core, "scalar")] = _scalar
    del _core

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise _BatchNotReadable(f"{module}.{name} is not allowed in a CIFAR-10 batch (only "
                                "numpy arrays, lists, dicts and bytes are read)")

    def persistent_load(self, pid):
        raise _BatchNotReadable("a persistent id")


def _scan_opcodes(blob: bytes) -> None:
    """Walk the pickle's opcodes without running them: at most MAX_BATCH_OPCODES, and no
    extension codes (copyreg's registry names classes by number; a batch has none)."""
    count = 0
    try:
        for opcode, _, _ in pickletools.genops(blob):
            count += 1
            if count > MAX_BATCH_OPCODES:
                raise _BatchNotReadable(f"more than {MAX_BATCH_OPCODES:,} pickle opcodes (a "
                                        "CIFAR-10 batch has a few tens of thousands)")
            if opcode.name.startswith("EXT"):
                raise _BatchNotReadable(f"extension code opcode {opcode.name} (a CIFAR-10 "
                                        "batch uses none)")
    except _BatchNotReadable:
        raise
    except Exception as err:  # noqa: BLE001 - genops reports a damaged pickle many ways
        raise _BatchNotReadable(f"not a pickle ({type(err).__name__}: {err})") from None


def _field(batch: dict, key: str):
    value = batch.get(key.encode(), batch.get(key))
    return value.array if isinstance(value, _PendingArray) else value


def _labels(value, rows: int) -> np.ndarray:
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "iu" or value.shape != (rows,):
            raise _BatchNotReadable(f"'labels' is an array of {value.dtype} {value.shape}, not "
                                    f"{rows} integers")
        labels = value
    elif isinstance(value, list):
        # Checked element by element before numpy sees it: a list of shared references to
        # lists would expand without bound inside np.asarray.
        if len(value) != rows or not all(type(k) is int for k in value):
            raise _BatchNotReadable(f"'labels' is not a list of {rows} integers (one per row of "
                                    "'data')")
        labels = np.array(value, np.int64)
    else:
        raise _BatchNotReadable(f"'labels' is a {type(value).__name__}, not a list of integers")
    if labels.size and not (0 <= labels.min() and labels.max() < CIFAR_CLASSES):
        raise _BatchNotReadable(f"'labels' hold {labels.min()}..{labels.max()}; CIFAR-10's "
                                f"are 0..{CIFAR_CLASSES - 1}")
    return labels.astype(np.int32)


def _cifar_batch(file: Path):
    """(images uint8 (N, 32, 32, 3), labels int32 (N,)) of one python batch; an InputError
    naming the file when it is not one (too large, a damaged or foreign pickle, a top-level
    object that is not a dict, data that is not N x 3072 bytes, labels out of 0..9)."""
    try:
        size = file.stat().st_size
        if size > MAX_BATCH_BYTES:
            raise _BatchNotReadable(f"{size:,} bytes, more than the {MAX_BATCH_BYTES:,} a "
                                    "CIFAR-10 batch can be (they are about 31 MB)")
        blob = file.read_bytes()
        _scan_opcodes(blob)
        try:
            batch = _CifarUnpickler(io.BytesIO(blob), encoding="bytes").load()
        except _BatchNotReadable:
            raise
        except Exception as err:  # noqa: BLE001 - a damaged pickle fails many ways
            raise _BatchNotReadable(f"a damaged pickle ({type(err).__name__}: {err})") from None
        if not isinstance(batch, dict):
            raise _BatchNotReadable(f"its top-level object is a {type(batch).__name__}; a batch "
                                    "is a dict with 'data' and 'labels'")
        data, labels = _field(batch, "data"), _field(batch, "labels")
        if data is None or labels is None:
            raise _BatchNotReadable("no 'data'/'labels' keys")
        if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
                and data.shape[1] == CIFAR_IMAGE_BYTES):
            shown = (f"an array of {data.dtype} {data.shape}" if isinstance(data, np.ndarray)
                     else f"a {type(data).__name__}")
            raise _BatchNotReadable(f"'data' is {shown}, not uint8 rows of "
                                    f"{CIFAR_IMAGE_BYTES} bytes")
        labels = _labels(labels, len(data))
    except _BatchNotReadable as err:
        raise InputError(f"{file} is not a CIFAR-10 python batch: {err}") from None
    x = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return x, labels


def cifar10(path: str | Path, ood: str = "none") -> Dataset:
    """CIFAR-10 from the python-pickle batches in `path` (cifar-10-batches-py); images
    (N, 32, 32, 3), standardized per channel; `ood` "cifar10.1" / "cifar10.2" adds the user's
    files of that test set as the out-of-distribution split."""
    path = Path(path).expanduser()
    missing = [name for name in CIFAR_FILES if not (path / name).is_file()]
    if missing:
        raise DatasetFilesMissing(
            f"dataset 'cifar10' needs the python batches {list(CIFAR_FILES)} in {path}; "
            f"missing: {missing}. ufm downloads nothing: unpack cifar-10-python.tar.gz there "
            "or set data.path")
    train = [_cifar_batch(path / name) for name in CIFAR_FILES[:-1]]
    x_tr, y_tr = np.concatenate([t[0] for t in train]), np.concatenate([t[1] for t in train])
    x_te, y_te = _cifar_batch(path / "test_batch")
    x_tr, x_te = x_tr.astype(np.float32) / 255.0, x_te.astype(np.float32) / 255.0
    mean, std = x_tr.mean((0, 1, 2)), x_tr.std((0, 1, 2))
    data = Dataset("cifar10", (x_tr - mean) / std, y_tr, (x_te - mean) / std, y_te, 10)
    if ood in CIFAR_SHIFT_FILES:
        x_ood, y_ood = cifar10_shifted(path, ood, mean, std)
        data = data._replace(x_ood=x_ood, y_ood=y_ood, ood=ood)
    return data


def gaussian(num_classes: int = 10, n_train: int = 100, n_test: int = 20,
             shape: tuple[int, ...] = (32,), separation: float = 3.0, seed: int = 0) -> Dataset:
    """K Gaussian classes in R^shape: means of norm `separation` in random directions, unit
    noise; n_train and n_test samples per class."""
    rng = np.random.default_rng(seed)
    dim = int(np.prod(shape))
    means = rng.standard_normal((num_classes, dim))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)

    def draw(n):
        y = np.repeat(np.arange(num_classes, dtype=np.int32), n)
        x = means[y] + rng.standard_normal((len(y), dim))
        return x.reshape((len(y),) + tuple(shape)).astype(np.float32), y

    (x_tr, y_tr), (x_te, y_te) = draw(n_train), draw(n_test)
    return Dataset("gaussian", x_tr, y_tr, x_te, y_te, num_classes)


def _rotate(x: np.ndarray, degrees: float) -> np.ndarray:
    """Images (N, H, W[, C]) or flattened square images (N, side^2) rotated by `degrees`."""
    from scipy import ndimage

    flat = x.ndim == 2
    if flat:
        side = int(round(np.sqrt(x.shape[1])))
        if side * side != x.shape[1]:
            raise ValueError(f"data.ood='rotation' needs images; inputs of shape {x.shape[1:]} "
                             "are not square images")
        x = x.reshape(len(x), side, side)
    out = ndimage.rotate(x, degrees, axes=(1, 2), reshape=False, order=1, mode="nearest")
    return out.reshape(len(out), -1) if flat else out


def shift(data: Dataset, kind: str, strength: float | None = None, seed: int = 0) -> Dataset:
    """`data` with an out-of-distribution split: its test split moved by the shift `kind`
    ("rotation", "noise", "contrast"; module docstring), of `strength` (None: the default)."""
    if kind not in SHIFT_STRENGTHS:
        raise ValueError(f"data.ood={kind!r} is not allowed here: one of "
                         f"{list(SHIFT_STRENGTHS)} (cifar10.1 / cifar10.2 come with "
                         "data.name = 'cifar10')")
    strength = SHIFT_STRENGTHS[kind] if strength is None else float(strength)
    x = data.x_test
    if kind == "rotation":
        moved = _rotate(x, strength)
    elif kind == "noise":
        moved = x + strength * np.random.default_rng(seed + 104729).standard_normal(x.shape)
    else:
        moved = strength * x
    return data._replace(x_ood=moved.astype(np.float32), y_ood=data.y_test,
                         ood=f"{kind}({strength:g})")


def cifar10_shifted(path: str | Path, kind: str, mean: Sequence[float],
                    std: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """The user's CIFAR-10.1 / CIFAR-10.2 test images, standardized with CIFAR-10's `mean`,
    `std`; DatasetFilesMissing naming the files when they are not in `path`."""
    path = Path(path).expanduser()
    files = CIFAR_SHIFT_FILES[kind]
    missing = [name for name in files if not (path / name).is_file()]
    if missing:
        raise DatasetFilesMissing(
            f"data.ood={kind!r} needs {list(files)} in {path}; missing: {missing}. ufm "
            "downloads nothing: put the files next to the CIFAR-10 batches or set data.path")
    if kind == "cifar10.1":
        x = np.load(path / files[0], allow_pickle=False)
        y = np.load(path / files[1], allow_pickle=False)
    else:
        with np.load(path / files[0], allow_pickle=False) as archive:
            x, y = archive["images"], archive["labels"]
    x = np.asarray(x, np.uint8).reshape(-1, 32, 32, 3).astype(np.float32) / 255.0
    return ((x - mean) / std).astype(np.float32), np.asarray(y, np.int32)


def apply_variant(data: Dataset, variant: str, seed: int = 0) -> Dataset:
    """The random-labels / random-inputs versions of a dataset (training split only)."""
    if variant not in VARIANTS:
        raise ValueError(f"data.variant={variant!r} is not allowed: one of {list(VARIANTS)}")
    rng = np.random.default_rng(seed + 7919)
    if variant == "random_labels":
        y = rng.integers(0, data.num_classes, len(data.y_train)).astype(np.int32)
        return data._replace(y_train=y)
    if variant == "random_inputs":
        x = rng.standard_normal(data.x_train.shape) * data.x_train.std() + data.x_train.mean()
        return data._replace(x_train=x.astype(np.float32))
    return data


def load(name: str = "digits", *, path: str | Path | None = None, variant: str = "none",
         seed: int = 0, image: bool = False, n_train: int | None = None, ood: str = "none",
         ood_strength: float | None = None, standardize: bool = True,
         **gaussian_options) -> Dataset:
    """A dataset by name (see the module docstring), with its variant applied. `image` gives
    image-shaped inputs for digits/MNIST; `n_train` keeps the first n_train training samples
    per class (a balanced subset); `ood` adds an out-of-distribution split (`SHIFTS`) of
    `ood_strength` (None: the shift's default); `standardize`: the user's arrays standardized
    (`arrays`; the bundled and generated data are as documented above)."""
    if name not in DATASETS:
        raise ValueError(f"data.name={name!r} is not allowed: one of {list(DATASETS)}")
    if ood not in SHIFTS:
        raise ValueError(f"data.ood={ood!r} is not allowed: one of {list(SHIFTS)}")
    if ood in CIFAR_SHIFT_FILES and name != "cifar10":
        raise ValueError(f"data.ood={ood!r} is not allowed with data.name={name!r}: it is a "
                         "CIFAR-10 test set (data.name = 'cifar10')")
    if name in ("mnist", "cifar10", "arrays") and path is None:
        raise ValueError(f"data.name={name!r} needs data.path: the folder holding its files "
                         "(nothing is downloaded)")
    if name == "digits":
        data = digits(seed, image)
    elif name == "mnist":
        data = mnist(path, image)
    elif name == "cifar10":
        data = cifar10(path, ood)
    elif name == "arrays":
        data = arrays(path, standardize)
        if ood in SHIFT_STRENGTHS and data.x_ood is not None:
            raise ValueError(f"data.ood={ood!r} is not allowed with {path}'s own x_ood: one "
                             "out-of-distribution split ('none' keeps the file's)")
    else:
        data = gaussian(seed=seed, **gaussian_options)
    if n_train is not None:
        keep = np.concatenate([np.flatnonzero(data.y_train == k)[:n_train]
                               for k in range(data.num_classes)])
        data = data._replace(
            x_train=data.x_train[np.sort(keep)], y_train=data.y_train[np.sort(keep)]
        )
    if ood in SHIFT_STRENGTHS:
        data = shift(data, ood, ood_strength, seed)
    return check_classes(apply_variant(data, variant, seed))
