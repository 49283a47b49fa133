"""`ufm._cache`: JAX's persistent compilation cache on by default in the user's cache folder,
read back by a second process; switched off, or left to JAX's own setting, on request."""
import json
import os
import subprocess
import sys

PROGRAM = """
import json, jax, jax.numpy as jnp, ufm
from ufm import _cache
f = jax.jit(lambda x: jnp.sin(x) @ jnp.cos(x).T + jnp.tanh(x).sum())
f(jnp.ones((64, 64))).block_until_ready()
print(json.dumps({"folder": str(_cache.folder()), "jax": jax.config.jax_compilation_cache_dir}))
"""


def _run(tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE",
                                                                       "UFM_CACHE", "UFM_COMP"))}
    # Every program is stored, however fast it compiled (the tests compile fast).
    clean.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", HOME=str(tmp_path / "home"),
                 XDG_CACHE_HOME="", **env)
    out = subprocess.run([sys.executable, "-c", PROGRAM], env=clean, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_on_by_default_in_the_users_cache_folder_and_shared_by_processes(tmp_path):
    first = _run(tmp_path)
    folder = tmp_path / "home" / ".cache" / "ufm" / "jax"
    assert first == {"folder": str(folder), "jax": str(folder)}
    entries = sorted(p.name for p in folder.iterdir())
    assert entries  # the program was stored
    second = _run(tmp_path)
    assert second == first and sorted(p.name for p in folder.iterdir()) == entries  # read back


def test_a_chosen_folder_the_off_switch_and_jaxs_own_setting(tmp_path):
    chosen = tmp_path / "mine"
    assert _run(tmp_path, UFM_CACHE_DIR=str(chosen))["folder"] == str(chosen)
    assert any(chosen.iterdir())
    off = _run(tmp_path, UFM_COMPILATION_CACHE="off")
    assert off == {"folder": "None", "jax": None}
    assert not (tmp_path / "home" / ".cache").exists()
    jaxs = tmp_path / "jaxs"
    assert _run(tmp_path, JAX_COMPILATION_CACHE_DIR=str(jaxs)) == {"folder": "None",
                                                                  "jax": str(jaxs)}
