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


def _ufm_env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    # one device per process, the same compiler flags as this process (its reference run)
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split()
                                if not f.startswith("--xla_force_host_platform_device_count"))
    return {k: v for k, v in env.items() if not k.startswith("SLURM_")}


def _ufm(args, env=None, **kwargs):
    return subprocess.Popen([sys.executable, "-m", "ufm", "run", *args, "--no-plots",
                             "--no-progress"], env=env or _ufm_env(), stdout=subprocess.PIPE,
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


def _slurm(**values):
    env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "node[001-004]", "SLURM_NTASKS": "8",
           "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}
    env.update({k: str(v) for k, v in values.items()})
    return env


def test_slurm_local_device_ids_match_the_common_layouts():
    ids = multihost.slurm_local_device_ids
    # One task per node with all its GPUs (--ntasks-per-node=1 --gpus-per-task=8): all 8, not
    # the one numbered SLURM_LOCALID that JAX's detection alone would give.
    assert ids(_slurm(SLURM_STEP_TASKS_PER_NODE="1(x4)", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
                      SLURM_GPUS_ON_NODE=8)) == list(range(8))
    assert ids(_slurm(SLURM_TASKS_PER_NODE="1(x2)", SLURM_GPUS_ON_NODE=4)) == [0, 1, 2, 3]
    # One task per GPU sharing the node's GPUs (no binding): the SLURM_LOCALID-th.
    shared = dict(SLURM_STEP_TASKS_PER_NODE="8", CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
                  SLURM_GPUS_ON_NODE=8)
    assert ids(_slurm(SLURM_LOCALID=3, **shared)) == [3]
    # One task per GPU bound to it (--gpus-per-task=1 / --gpu-bind): the one it sees.
    assert ids(_slurm(SLURM_LOCALID=5, SLURM_STEP_TASKS_PER_NODE="8", CUDA_VISIBLE_DEVICES="5",
                      SLURM_GPUS_ON_NODE=8)) == [0]
    assert ids(_slurm(SLURM_LOCALID=1, SLURM_STEP_TASKS_PER_NODE="2", CUDA_VISIBLE_DEVICES="2,3",
                      SLURM_GPUS_PER_TASK=2)) == [0, 1]
    # Four tasks sharing eight GPUs: two each; AMD's variable reads the same.
    assert ids(_slurm(SLURM_LOCALID=1, SLURM_STEP_TASKS_PER_NODE="4(x2)",
                      ROCR_VISIBLE_DEVICES="0,1,2,3,4,5,6,7")) == [2, 3]
    # Not SLURM, no GPUs (CPU or TPU nodes), a layout that does not divide: JAX's own choice.
    assert ids({"CUDA_VISIBLE_DEVICES": "0,1"}) is None
    assert ids(_slurm(SLURM_STEP_TASKS_PER_NODE="2")) is None
    assert ids(_slurm(SLURM_STEP_TASKS_PER_NODE="3", CUDA_VISIBLE_DEVICES="0,1,2,3")) is None
    assert multihost._tasks_per_node("4(x2),2,1(x3)") == [4, 4, 2, 1, 1, 1]


@pytest.mark.parametrize("layout", [
    "per_gpu",  # two tasks on one node, one GPU each
    pytest.param("per_node", marks=pytest.mark.slow),  # two nodes, one task each with 4 GPUs
])
def test_a_simulated_slurm_job_runs_the_one_process_table(tmp_path, layout):
    """Two processes on 127.0.0.1 started as `srun ... ufm run FILE --distributed` would start
    them (SLURM's variables, CUDA_VISIBLE_DEVICES; the CPU backend ignores the device ids, so
    the ids ufm passes are read from its first line): each names its share, and the table is the
    one-process table."""
    exp = tmp_path / "grid.toml"
    exp.write_text(GRID)
    out = tmp_path / "slurm"
    port = _free_port()
    procs = []
    for i in range(2):
        env = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "127.0.0.1", "SLURM_NTASKS": "2",
               "SLURM_PROCID": str(i), "JAX_COORDINATOR_PORT": str(port)}
        if layout == "per_gpu":
            env.update(SLURM_LOCALID=str(i), SLURM_NODEID="0", SLURM_STEP_TASKS_PER_NODE="2",
                       CUDA_VISIBLE_DEVICES="0,1", SLURM_GPUS_ON_NODE="2")
        else:
            env.update(SLURM_LOCALID="0", SLURM_NODEID=str(i), SLURM_STEP_TASKS_PER_NODE="1(x2)",
                       CUDA_VISIBLE_DEVICES="0,1,2,3", SLURM_GPUS_ON_NODE="4")
        procs.append(_ufm([str(exp), "--out", str(out), "--distributed"],
                          env=dict(_ufm_env(), **env)))
    outputs = [p.communicate(timeout=300) for p in procs]
    for i, (p, (_, err)) in enumerate(zip(procs, outputs)):
        assert p.returncode == 0, err
        expected = [i] if layout == "per_gpu" else [0, 1, 2, 3]
        assert f"process {i} of 2 (slurm)" in err and f"local device ids {expected}" in err, err
    ufm.run(exp, out=tmp_path / "one", progress=False)
    one, two = _table(tmp_path / "one"), _table(out)
    assert list(one) == list(two) and len(one["row"]) == 24
    for key in one:
        assert list(map(str, one[key])) == list(map(str, two[key])), key
