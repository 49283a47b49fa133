"""Sharding a batch over several devices changes the results only by round-off (4 simulated
CPU devices in a subprocess, since the device count is fixed when JAX starts; the one-device run
is this process): a vmapped matmul of another batch width may sum in another order, so the last
bits can differ (relative 1e-12 in float64, for CE and MSE alike); statuses and step counts
cannot."""
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax, ufm

    def run(path):
        found = {"devices": jax.local_device_count()}
        for loss in ("ce", "mse"):
            prob = ufm.Problem(num_classes=4, feature_dim=5, n_per_class=3, loss=loss,
                               dtype="float64")
            # 6 configurations (padded to 8 on 4 devices), one of them diverging
            hyp = ufm.Hyper(lam_W=np.linspace(5e-3, 2e-2, 6), lam_H=1e-2,
                            lr=np.array([0.5, 0.8, 1.0, 1e4, 0.6, 0.7]))
            b = ufm.solve_batch(prob, hyp, list(range(6)), steps=300, log_every=50,
                                progress=False)
            found.update({f"{loss}_W": np.asarray(b.params.W), f"{loss}_H": np.asarray(b.params.H),
                          f"{loss}_objective": b.history["objective"],
                          f"{loss}_steps": b.steps, f"{loss}_status": np.array(b.status)})
            # one configuration at a time (on 4 devices: two slices on each, under lax.map)
            one = ufm.solve_batch(prob, hyp, list(range(6)), steps=300, log_every=50,
                                  progress=False, width=1)
            found.update({f"{loss}_w1_H": np.asarray(one.params.H),
                          f"{loss}_w1_steps": one.steps})
        np.savez(path, **found)

    if __name__ == "__main__":
        run(sys.argv[1])
""")


def test_results_agree_on_one_and_four_devices(tmp_path):
    assert jax.local_device_count() == 1
    namespace = {"__name__": "in_process"}
    exec(SCRIPT, namespace)
    namespace["run"](tmp_path / "one.npz")
    env = dict(os.environ, XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") +
                                      " --xla_force_host_platform_device_count=4").strip())
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "four.npz")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    one, four = np.load(tmp_path / "one.npz"), np.load(tmp_path / "four.npz")
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4
    for loss in ("ce", "mse"):
        for key in ("steps", "status"):
            np.testing.assert_array_equal(one[f"{loss}_{key}"], four[f"{loss}_{key}"])
        np.testing.assert_array_equal(one[f"{loss}_steps"], four[f"{loss}_w1_steps"])
        np.testing.assert_allclose(one[f"{loss}_H"], four[f"{loss}_w1_H"], rtol=1e-12,
                                   atol=1e-14, err_msg=f"{loss} H, one at a time")
        for key in ("W", "H", "objective"):
            np.testing.assert_allclose(one[f"{loss}_{key}"], four[f"{loss}_{key}"], rtol=1e-12,
                                       atol=1e-14, err_msg=f"{loss} {key}")
        assert list(four[f"{loss}_status"]).count("diverged") == 1


HOST_DEVICES = textwrap.dedent("""
    import os, sys, jax
    from ufm.solvers import batching
    try:
        batching.use_host_devices(0)
    except ValueError as err:
        print("refused:", err)
    print("set:", batching.use_host_devices(3))
    print("devices:", jax.local_device_count())
    print("again:", batching.use_host_devices(2))  # JAX has started: not ufm's choice any more
""")


def test_host_devices_split_the_cpu_before_jax_starts(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    out = subprocess.run([sys.executable, "-c", HOST_DEVICES], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "refused: host devices=0 is not allowed: an integer >= 1" in out.stdout
    assert "set: 3" in out.stdout and "devices: 3" in out.stdout and "again: None" in out.stdout
    # A device count forced through XLA_FLAGS is the user's choice: left as it is.
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    out = subprocess.run([sys.executable, "-c", HOST_DEVICES], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "set: None" in out.stdout and "devices: 2" in out.stdout


def test_cli_refuses_a_bad_host_device_count(capsys):
    from ufm import cli

    assert cli.main(["run", "--host-devices", "0", "--no-plots"]) == 2
    assert "--host-devices 0 is not allowed: an integer >= 1" in capsys.readouterr().err
