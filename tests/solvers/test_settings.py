"""`ufm.SolverSettings`: one typed value for every solver option; the grid's [solver] section is
generated from it, its rules say what each field allows, and equal settings are one value."""
import numpy as np
import pytest

import ufm
from ufm.running.kinds import grid
from ufm.solvers import settings as settings_module
from ufm.solvers.settings import RULES, SolverSettings


def test_every_field_has_a_rule_and_the_solver_section_is_generated_from_them():
    assert set(RULES) == set(SolverSettings._fields)
    section = grid.SOLVER_SECTION
    assert list(section) == list(SolverSettings._fields)  # file order is field order
    for name, default in SolverSettings()._asdict().items():
        field, rule = section[name], RULES[name]
        assert (field.default, field.type, field.optional, field.choices) == (
            default, rule.type, rule.optional, rule.choices)
        assert field.axis == (name == "name")  # only the solver's name is a grid axis
        if rule.test is not None:
            assert field.rule[1] == rule.allowed


def test_a_grid_passes_its_section_as_one_value():
    experiment = ufm.running.experiment.resolve({"solver": {"name": ["gd", "adam"], "steps": 7,
                                                            "check_every": 3}})
    found = grid.solver_settings(experiment, "adam")
    assert found == SolverSettings(name="adam", steps=7, check_every=3)
    assert found.shared() == grid.solver_settings(experiment, "gd").shared()
    assert found.shared() != SolverSettings(name="adam", steps=8, check_every=3).shared()


@pytest.mark.parametrize("field, value, words", [
    ("steps", 0, "steps=0 is not allowed: an integer from 1 to 2147483647"),
    ("steps", 2.5, "steps=2.5 is not allowed"),
    ("log_every", True, "log_every=True is not allowed"),
    ("tol", -1.0, "tol=-1.0 is not allowed: a number >= 0"),
    ("tol", float("nan"), "tol=nan is not allowed"),
    ("init_scale", 2e6, r"init_scale=2000000.0 is not allowed: a number in \(0, 1e6\]"),
    ("fast", "yes", "fast='yes' is not allowed: true or false"),
    ("check_every", 0, "check_every=0 is not allowed: an integer >= 1"),
    ("kernel", "cuda", r"kernel='cuda' is not allowed: one of \['xla', 'pallas'\]"),
    ("name", "sgd", r"solver='sgd' is not allowed: one of \['gd'"),
    ("anneal_from", 0.0, "anneal_from=0.0 is not allowed: a temperature > 0"),
    ("anneal_fraction", 1.5, "anneal_fraction=1.5 is not allowed: a number > 0 and <= 1"),
])
def test_a_bad_value_is_named_with_what_is_allowed(field, value, words):
    problem = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    with pytest.raises(ValueError, match=words):
        SolverSettings(**{field: value}).checked(problem)


def test_checked_resolves_tol_and_takes_numpy_integers():
    f32 = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2)
    f64 = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, dtype="float64")
    assert SolverSettings().checked(f32).tol == 1e-6
    assert SolverSettings().checked(f64).tol == 1e-10
    done = SolverSettings(steps=np.int64(30), log_every=np.int32(10)).checked(f32)
    assert type(done.steps) is int and type(done.log_every) is int and done.num_logs == 3
    hash(done)  # a static argument of compiled functions


def test_keywords_replace_fields_and_unknown_ones_are_named():
    base = SolverSettings(name="lbfgs", steps=50)
    assert SolverSettings.of(base, steps=60) == SolverSettings(name="lbfgs", steps=60)
    assert SolverSettings.of(None, solver="adam").name == "adam"
    with pytest.raises(TypeError, match="unknown solver option 'step'.*'steps'"):
        SolverSettings.of(base, step=3)
    with pytest.raises(TypeError, match="not both"):
        SolverSettings.of(base, solver="gd", name="adam")


def test_solve_with_settings_equals_solve_with_keywords():
    problem = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=3, dtype="float64")
    hyper = ufm.Hyper(lam_W=1e-2, lam_H=1e-2)
    by_value = ufm.solve(problem, hyper, SolverSettings(name="lbfgs", steps=40, log_every=20))
    by_keyword = ufm.solve(problem, hyper, solver="lbfgs", steps=40, log_every=20)
    np.testing.assert_array_equal(by_value.params.W, by_keyword.params.W)
    assert by_value.status == by_keyword.status


def test_the_annealing_schedule_and_the_fast_path_come_from_the_settings():
    assert SolverSettings().anneal() is None
    assert SolverSettings(steps=1000, anneal_from=1.0, anneal_fraction=0.25).anneal() == (1.0,
                                                                                         250)
    deep = ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2, depth=2)
    assert SolverSettings().fast_path(deep) is None  # the reference path runs the deep UFM
    assert settings_module.FastPath(25, False) == SolverSettings().fast_path(
        ufm.Problem(num_classes=3, feature_dim=4, n_per_class=2))
