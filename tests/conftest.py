"""Test set-up: implicit rank promotion is an error (it hides shape bugs), float32 by default
(float64 tests ask for it through Problem.dtype or jax.enable_x64).

Compiled programs are shared through JAX's persistent compilation cache in a folder of this
test session alone (both xdist workers and every subprocess a test starts use it): the same
program compiled in several processes compiles once. Compilation is most of what a small solve
costs."""
import os
import shutil
import tempfile

import jax
import pytest

# The first process (pytest itself, before it starts its workers) makes the folder; the workers
# and subprocesses inherit it through the environment.
_OWNER = "JAX_COMPILATION_CACHE_DIR" not in os.environ
if _OWNER:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ufm-test-jax-cache-")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# The tests' programs are small and compiling is most of what they cost: XLA's backend
# optimizations off makes the suite about 30% faster (measured on test_solvers + test_fused:
# 114 s -> 79 s; long runs such as the default experiment are no slower). Every tolerance holds
# either way; UFM_TEST_OPTIMIZE=1 compiles as users do.
if os.environ.get("UFM_TEST_OPTIMIZE") != "1" and \
        "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_sessionfinish(session, exitstatus):
    if _OWNER and "PYTEST_XDIST_WORKER" not in os.environ:
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
