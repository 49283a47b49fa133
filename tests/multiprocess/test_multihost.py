"""Two processes on 127.0.0.1 (JAX's multi-controller runtime, gloo collectives on CPU) run an
experiment between them (a grid, a landscape experiment, a network experiment); process 0 writes
one folder whose table equals a one-process run's (this process)."""
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import ufm
from ufm.running import multihost, results

GRID = """
name = "two_hosts"
[problem]
num_classes = 3
feature_dim = 4
n_per_class = 2
loss = ["ce", "mse"]
dtype = "float64"
[hyper]
lam_W = [1e-2, 2e-2, 3e-2]
lam_H = 1e-2
lr = [0.5, 1e4]
[solver]
steps = 200
log_every = 50
[run]
seeds = [0, 1]
chunk = 4
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ufm(args, **kwargs):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # one device per process, the same compiler flags as this process (its reference run)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    return subprocess.Popen([sys.executable, "-m", "ufm", "run", *args, "--no-plots",
                             "--no-progress"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def _table(path):
    table = results.read_table(path / results.RESULTS)
    return {k: v for k, v in table.items() if k != "seconds"}


LANDSCAPE = """
kind = "origin_phase"
name = "two_hosts_landscape"
[problem]
num_classes = 3
feature_dim = 3
n_per_class = 2
dtype = "float64"
[hyper]
lam_W = [5e-3, 1e-2, 2e-2]
lam_H = 5e-3
lam_b = 0.0
[solver]
name = "lbfgs"
steps = 200
log_every = 100
[landscape]
ratios = [0.5, 2.0]
"""

NET = """
kind = "net"
name = "two_hosts_net"
[data]
name = "gaussian"
gaussian_dim = 6
n_train = 8
[model]
width = 12
depth = 2
head = ["learned", "etf", "cmf"]
[train]
epochs = 2
eval_every = 1
batch_size = 8
layer_samples = 24
"""


def _two_processes(file, out):
    port = _free_port()
    procs = [_ufm([str(file), "--out", str(out), "--coordinator", f"127.0.0.1:{port}",
                   "--num-processes", "2", "--process-id", str(i)]) for i in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    assert "on 2 processes" in outputs[0][1]
    # only process 0 wrote: no temporary or second copy of anything
    assert not [f for f in out.rglob("*") if ".tmp" in f.name]


# Slow (22 s together): the grid's two-process test above covers the shared machinery
# (ufm.running.experiment.run's rounds and gathering) in the default suite.
@pytest.mark.slow
@pytest.mark.parametrize("text", [LANDSCAPE, NET], ids=["landscape", "net"])
def test_two_processes_write_one_folder_of_any_kind(tmp_path, text):
    file = tmp_path / "experiment.toml"
    file.write_text(text)
    _two_processes(file, tmp_path / "two")
    ufm.run(file, out=tmp_path / "one", progress=False)
    one, two = _table(tmp_path / "one"), _table(tmp_path / "two")
    assert list(one) == list(two) and len(one["row"]) >= 3
    for key in one:
        assert list(map(str, one[key])) == list(map(str, two[key])), key


def test_two_processes_write_the_one_process_table(tmp_path):
    exp = tmp_path / "grid.toml"
    exp.write_text(GRID)
    _two_processes(exp, tmp_path / "two")
    ufm.run(exp, out=tmp_path / "one", progress=False)
    one, two = _table(tmp_path / "one"), _table(tmp_path / "two")
    assert list(one) == list(two) and len(one["row"]) == 24
    for key in one:
        a, b = [list(map(str, t[key])) for t in (one, two)]  # exact, NaN == NaN, None == None
        assert a == b, key
    assert list(two["status"]).count("diverged") == 12  # lr = 1e4, flagged in its own rows
    h1, h2 = results.load_results(tmp_path / "one")[1], results.load_results(tmp_path / "two")[1]
    for key in h1:
        np.testing.assert_array_equal(h1[key], h2[key], err_msg=key)


def test_initialize_names_what_is_missing(monkeypatch):
    monkeypatch.setattr(multihost.initialize, "_done", False, raising=False)
    with pytest.raises(ValueError, match="needs num_processes and process_id"):
        multihost.initialize("127.0.0.1:1234")
    with pytest.raises(ValueError, match="process_id=2 is not allowed"):
        multihost.initialize("127.0.0.1:1234", 2, 2)
    monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
    with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not allowed"):
        multihost.initialize("127.0.0.1:1234")
