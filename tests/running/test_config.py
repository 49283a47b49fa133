import textwrap

import pytest

import ufm
from ufm.running import config, experiment

GOOD = """
name = "tiny"
[problem]
num_classes = 3
feature_dim = 4
n_per_class = 2
loss = ["ce", "mse"]
[hyper]
lam_W = [1e-3, 1e-2]
[solver]
steps = 10
[run]
seeds = [0, 1]
"""


def _write(tmp_path, text):
    path = tmp_path / "exp.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_grid_expansion_and_every_default_written_out(tmp_path):
    exp = ufm.running.experiment.load(_write(tmp_path, GOOD))
    configs = ufm.running.kinds.grid.configurations(exp)
    assert len(configs) == 2 * 2 * 2  # loss x lam_W x seeds
    assert {c.problem.loss for c in configs} == {"ce", "mse"}
    assert configs[0].axes == (("loss", "ce"), ("lam_W", 1e-3))
    text = ufm.running.experiment.dumps(exp)
    for key in ("geometry", "dtype", "lam_b", "tau", "beta2", "log_every", "init_scale"):
        assert f"{key} = " in text
    again = ufm.running.experiment.load(_write(tmp_path, text))
    assert again.to_dict() == exp.to_dict()


def test_imbalanced_counts_and_count_axes(tmp_path):
    exp = ufm.running.experiment.load(_write(tmp_path, """
        [problem]
        num_classes = 3
        feature_dim = 4
        class_counts = [[1, 2, 3], [2, 2, 2]]
        """))
    problems = [c.problem for c in ufm.running.kinds.grid.configurations(exp)]
    assert [p.class_counts for p in problems] == [(1, 2, 3), (2, 2, 2)]


@pytest.mark.parametrize("text, message", [
    ("[problem]\nnum_classes = 1", "problem.num_classes=1 is not allowed: an integer >= 2"),
    ("[problem]\nfeature_dim = 0", "problem.feature_dim=0 is not allowed: an integer >= 1"),
    ("[problem]\nn_per_class = 0", "problem.n_per_class=0 is not allowed: an integer >= 1"),
    ("[problem]\nnum_classes = 2.5", "problem.num_classes=2.5 is not allowed: an integer"),
    ("[problem]\nloss = \"hinge\"", "problem.loss='hinge' is not allowed: one of"),
    ("[problem]\ngeometry = \"torus\"", "problem.geometry='torus' is not allowed: one of"),
    ("[problem]\nbias = \"yes\"", "problem.bias='yes' is not allowed: true or false"),
    ("[problem]\nlosss = \"ce\"", "unknown key problem.'losss': allowed keys are"),
    ("[hyper]\nlam_W = -1e-3", "hyper.lam_W=-0.001 is not allowed: a number >= 0"),
    ("[hyper]\nlam_H = [1e-3, -1.0]", "hyper.lam_H=-1.0 is not allowed: a number >= 0"),
    ("[hyper]\ntau = 0", "hyper.tau=0.0 is not allowed: a number > 0"),
    ("[hyper]\nalpha = 1.5", "hyper.alpha=1.5 is not allowed: a number >= 0 and < 1"),
    ("[hyper]\nlr = \"fast\"", "hyper.lr='fast' is not allowed: a number"),
    ("[solver]\nname = \"sgd\"", "solver.name='sgd' is not allowed: one of"),
    ("[solver]\nsteps = 0", "solver.steps=0 is not allowed: an integer from 1 to 2147483647"),
    # the step counter is int32: this was an OverflowError inside the run
    ("[solver]\nsteps = 1000000000000",
     "solver.steps=1000000000000 is not allowed: an integer from 1 to 2147483647"),
    ("[solver]\ntol = -1.0", "solver.tol=-1.0 is not allowed: a number >= 0"),
    ("[solver]\nfast = 1", "solver.fast=1 is not allowed: true or false"),
    ("[solver]\nfast = [true, false]", "solver.fast=[True, False] is not allowed: one value"),
    ("[solver]\ncheck_every = 0", "solver.check_every=0 is not allowed: an integer >= 1"),
    ("[solver]\nkernel = \"cuda\"", "solver.kernel='cuda' is not allowed: one of"),
    ("[run]\nseeds = [-1]", "run.seeds=[-1] is not allowed"),
    ("colour = \"red\"", "unknown key 'colour'"),
    ("[problem]\nnum_classes = 5\nfeature_dim = 2\nclassifier = \"fixed_etf\"",
     "problem.feature_dim=2 is not allowed"),
])
def test_bad_input_names_the_key_the_value_and_the_rule(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as err:
        ufm.running.experiment.load(_write(tmp_path, text))
    assert message in str(err.value)






def test_spaced_axes_zip_and_solver_axis(tmp_path):
    exp = ufm.running.experiment.load(_write(tmp_path, """
        [problem]
        num_classes = 3
        feature_dim = 4
        n_per_class = 2
        [hyper]
        lam_W = {logspace = [1e-4, 1e-2, 3]}
        tau = {linspace = [0.5, 1.0, 2]}
        [solver]
        name = ["gd", "adam"]
        [[zip]]
        loss = ["ce", "mse"]
        lam_b = [5e-4, 0.0]
        """))
    np_ = __import__("numpy")
    np_.testing.assert_allclose(exp.hyper["lam_W"], [1e-4, 1e-3, 1e-2])
    assert exp.hyper["tau"] == [0.5, 1.0]
    configs = ufm.running.kinds.grid.configurations(exp)
    assert len(configs) == 3 * 2 * 2 * 2  # lam_W x tau x solver x zip(loss, lam_b)
    pairs = {(c.problem.loss, c.hyper.lam_b) for c in configs}
    assert pairs == {("ce", 5e-4), ("mse", 0.0)}  # zipped, not crossed
    assert {c.solver for c in configs} == {"gd", "adam"}
    assert dict(configs[0].axes).keys() == {"lam_W", "tau", "solver", "loss", "lam_b"}
    again = ufm.running.experiment.load(_write(tmp_path, ufm.running.experiment.dumps(exp)))
    assert again.to_dict() == exp.to_dict()


@pytest.mark.parametrize("text, message", [
    ("[hyper]\nlr = {linspace = [0.1, 1.0]}", "hyper.lr.linspace=[0.1, 1.0] is not allowed"),
    ("[hyper]\nlr = {range = [1, 2, 3]}", "hyper.lr={'range': [1, 2, 3]} is not allowed"),
    ("[hyper]\nlr = {logspace = [0.0, 1.0, 3]}", "start and stop > 0"),
    ("[problem]\nnum_classes = {linspace = [2, 4, 3]}", "problem.num_classes="),
    ("[[zip]]\nloss = [\"ce\", \"mse\"]\nlr = [0.1]", "equal lengths"),
    ("[[zip]]\nlosses = [\"ce\"]", "unknown key zip.'losses'"),
    ("[problem]\nloss = \"ce\"\n[[zip]]\nloss = [\"ce\", \"mse\"]", "zip.loss is not allowed"),
    ("[[zip]]\nlr = [0.1, -1.0]", "hyper.lr=-1.0 is not allowed"),
    ("[solver]\nname = [\"gd\", \"sgd\"]", "solver.name='sgd' is not allowed"),
])
def test_bad_grid_axes(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as err:
        ufm.running.experiment.load(_write(tmp_path, text))
    assert message in str(err.value)


def test_solver_can_advance_in_a_zip(tmp_path):
    exp = ufm.running.experiment.load(_write(tmp_path, """
        [[zip]]
        solver = ["gd", "adam"]
        lr = [1.0, 0.01]
        """))
    found = {(c.solver, c.hyper.lr) for c in ufm.running.kinds.grid.configurations(exp)}
    assert found == {("gd", 1.0), ("adam", 0.01)}
    assert (
        experiment.load(_write(tmp_path, experiment.dumps(exp))).to_dict() == exp.to_dict()
    )
    with pytest.raises(config.ConfigError, match="solver.name='sgd'"):
        experiment.load(_write(tmp_path, '[[zip]]\nsolver = ["gd", "sgd"]\nlr = [1.0, 1.0]'))


def test_an_experiment_is_a_frozen_value():
    """Fields are never reassigned; what a kind derives once (a grid's configurations) is kept
    beside the value and does not change what it equals."""
    import dataclasses

    from ufm.running import experiment
    from ufm.running.kinds import grid

    first, second = experiment.load_default(), experiment.load_default()
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.name = "other"
    configs = grid.configurations(first)
    assert grid.configurations(first) is configs  # expanded once
    second.derived.clear()
    assert first == second and first.derived and not second.derived
