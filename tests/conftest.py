"""Test set-up: implicit rank promotion is an error (it hides shape bugs), float32 by default
(float64 tests ask for it through Problem.dtype or jax.enable_x64).

Compiled programs are shared through JAX's persistent compilation cache in a folder of this
test session alone (both xdist workers and every subprocess a test starts use it): the same
program compiled in several processes compiles once. Compilation is most of what a small solve
costs."""
import os
import shutil
import subprocess
import sys
import tempfile

import jax
import pytest

# The first process (pytest itself, before it starts its workers) makes the folder; the workers
# and subprocesses inherit it through the environment.
_OWNER = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWNER:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ufm-test-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The tests' programs are small and compiling is most of what they cost, so the tests compile
# for compile speed: XLA's backend optimizations off and (where this jaxlib has the switch) the
# CPU's MLIR fusion emitters off. Measured on the whole default suite: 6:16 with neither, 4:05
# with both (the emitters alone are about half of each compile). Every tolerance holds either
# way; UFM_TEST_OPTIMIZE=1 compiles as users do, and `without_fast_compile` gives a subprocess the
# users' settings (the long default run is twice as fast that way).
FAST_COMPILE_FLAGS = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")


def _known_flags(flags):
    """The longest prefix of `flags` this jaxlib accepts (an unknown flag aborts XLA)."""
    probe = "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"
    for n in range(len(flags), 0, -1):
        env = dict(os.environ, XLA_FLAGS=" ".join(flags[:n]), JAX_PLATFORMS="cpu")
        if subprocess.run([sys.executable, "-c", probe], env=env,
                          capture_output=True).returncode == 0:
            return list(flags[:n])
    return []


if "UFM_TEST_COMPILE_FLAGS" not in os.environ:  # the first process probes, the rest inherit
    wanted = os.environ.get("UFM_TEST_OPTIMIZE") != "1" and \
        "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", "")
    os.environ["UFM_TEST_COMPILE_FLAGS"] = " ".join(
        _known_flags(FAST_COMPILE_FLAGS) if wanted else [])
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " +
                               os.environ["UFM_TEST_COMPILE_FLAGS"]).strip()


def without_fast_compile(xla_flags: str) -> str:
    """XLA_FLAGS as a user would have them: the tests' compile-fast flags removed."""
    return " ".join(f for f in xla_flags.split() if f not in FAST_COMPILE_FLAGS)


jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_numpy_rank_promotion", "raise")
# One device in the test processes themselves: `ufm run` called in-process (`cli.main`) would
# otherwise split the CPU of whichever worker runs it first (`batching.use_host_devices`), and
# the tests after it there would run sharded. Subprocesses choose as users' `ufm run` does.
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    jax.config.update("jax_num_cpu_devices", 1)


def pytest_sessionfinish(session, exitstatus):
    if _OWNER and "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="session")
def default_run(tmp_path_factory):
    """The built-in default experiment, exactly as a user's `ufm run` runs it (float32, GD; the
    console command compiled with the users' settings: 50,000 steps run twice as fast as with
    the tests' compile-fast flags). Once per worker: the tests that use it share the xdist
    group "default_run", so it runs once in all."""
    out = tmp_path_factory.mktemp("runs") / "default"
    env = dict(os.environ, XLA_FLAGS=without_fast_compile(os.environ.get("XLA_FLAGS", "")))
    proc = subprocess.run([sys.executable, "-m", "ufm", "run", "--out", str(out),
                           "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "default: 12 runs" in proc.stdout + proc.stderr
    return out
