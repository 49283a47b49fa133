"""Sharding a batch over several devices changes the results only by round-off (4 simulated
CPU devices in a subprocess, since the device count is fixed when JAX starts): a vmapped matmul
of another batch width may sum in another order, so the last bits can differ; statuses and
step counts cannot."""
import os
import subprocess
import sys
import textwrap

import numpy as np

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, jax, ufm
    prob = ufm.Problem(num_classes=4, feature_dim=5, n_per_class=3, dtype="float64")
    # 6 configurations (padded to 8 on 4 devices), one of them diverging
    hyp = ufm.Hyper(lam_W=np.linspace(5e-3, 2e-2, 6), lam_H=1e-2,
                    lr=np.array([0.5, 0.8, 1.0, 1e4, 0.6, 0.7]))
    b = ufm.solve_batch(prob, hyp, list(range(6)), steps=300, log_every=50)
    np.savez(sys.argv[1], W=np.asarray(b.params.W), H=np.asarray(b.params.H),
             objective=b.history["objective"], steps=b.steps, status=np.array(b.status),
             devices=jax.local_device_count())
""")


def _run(tmp_path, name, devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = tmp_path / f"{name}.npz"
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return np.load(out)


def test_results_agree_on_one_and_four_devices(tmp_path):
    one, four = _run(tmp_path, "one", 1), _run(tmp_path, "four", 4)
    assert int(one["devices"]) == 1 and int(four["devices"]) == 4
    for key in ("steps", "status"):
        np.testing.assert_array_equal(one[key], four[key], err_msg=key)
    for key in ("W", "H", "objective"):
        np.testing.assert_allclose(one[key], four[key], rtol=1e-12, atol=1e-14, err_msg=key)
    assert list(four["status"]).count("diverged") == 1
