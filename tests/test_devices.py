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
        for key in ("W", "H", "objective"):
            np.testing.assert_allclose(one[f"{loss}_{key}"], four[f"{loss}_{key}"], rtol=1e-12,
                                       atol=1e-14, err_msg=f"{loss} {key}")
        assert list(four[f"{loss}_status"]).count("diverged") == 1
