import json

import numpy as np

from ufm import config, grid, io


def test_grid_groups_by_problem_and_solver_and_keeps_zip_pairs(tmp_path):
    exp = config.resolve({
        "name": "tiny-grid",
        "problem": {"num_classes": 3, "feature_dim": 4, "n_per_class": 2},
        "hyper": {"lam_W": {"logspace": [1e-3, 1e-2, 2]}, "lam_H": 1e-2},
        "solver": {"name": ["gd", "adam"], "steps": 40, "log_every": 20},
        "zip": [{"loss": ["ce", "mse"], "lam_b": [1e-3, 0.0], "lr": [0.5, 0.05]}],
        "run": {"seeds": [0, 1]},
    })
    result = grid.run(exp, out=tmp_path)
    table = io.read_table(tmp_path / io.RESULTS)
    assert len(table["row"]) == 2 * 2 * 2 * 2  # lam_W x solver x zip x seeds
    manifest = json.loads((tmp_path / io.MANIFEST).read_text())
    assert manifest["groups"] == 4  # (loss) x (solver): one compiled batch each
    assert set(zip(table["loss"], table["lam_b"], table["lr"])) == {("ce", 1e-3, 0.5),
                                                                    ("mse", 0.0, 0.05)}
    assert set(table["solver"]) == {"gd", "adam"}
    np.testing.assert_array_equal(table["row"], np.arange(16))
    # Same configuration, same seed: the grid row equals a direct solve.
    import ufm

    i = 5
    cfg = config.configurations(exp)[i]
    single = ufm.solve(cfg.problem, cfg.hyper, key=cfg.seed, steps=40, log_every=20,
                       solver=cfg.solver, tol=exp.solver["tol"] or 1e-6)
    np.testing.assert_allclose(table["objective"][i], single.history["objective"][-1], rtol=1e-5)
    assert result.rows[i]["solver"] == cfg.solver
