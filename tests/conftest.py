"""Test set-up: implicit rank promotion is an error (it hides shape bugs), float32 by default
(float64 tests ask for it through Problem.dtype or jax.enable_x64)."""
import jax
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield
