"""`ufm._moved`: every module name of release 0.1 still imports, and each name read from it is
its new home's object, with a DeprecationWarning naming that home."""
import importlib
import subprocess
import sys
import warnings

import pytest

import ufm
from ufm import _moved


@pytest.mark.parametrize("old", sorted(_moved.MOVED))
def test_every_old_module_imports_and_its_new_homes_exist(old):
    module = importlib.import_module(old)
    for home in _moved.MOVED[old]:
        importlib.import_module(home)  # raises if a home was renamed again
    assert module.__name__ == old and dir(module)


@pytest.mark.parametrize("old, name, home", [
    ("ufm.theory", "optimum", "ufm.analysis.theory"),
    ("ufm.theory", "softmax_code", "ufm.analysis.codes"),  # moved twice: 0.1's theory -> codes
    ("ufm.landscape", "probe", "ufm.analysis.landscape"),
    ("ufm.landscape", "benign_landscape", "ufm.running.landscapes"),
    ("ufm.metrics", "one_vs_rest_margins", "ufm.analysis.gnc"),
    ("ufm.host_metrics", "geometric_decay", "ufm.analysis.layerwise"),
    ("ufm.grid", "configurations", "ufm.running.kinds.grid"),
    ("ufm.nets.experiment", "KINDS", "ufm.running.kinds.net"),
    ("ufm.runner", "use_host_devices", "ufm.solvers.batching"),
])
def test_a_name_read_from_an_old_module_is_the_new_one_with_a_warning(old, name, home):
    module = importlib.import_module(old)
    with pytest.warns(DeprecationWarning, match=f"{old}.{name} moved to {home}.{name}"):
        found = getattr(module, name)
    assert found is getattr(importlib.import_module(home), name)


def test_from_import_and_attribute_access_forward_too():
    with pytest.warns(DeprecationWarning, match="ufm.codes.tammes_code moved"):
        from ufm.codes import tammes_code
    assert tammes_code is ufm.analysis.codes.tammes_code
    with pytest.warns(DeprecationWarning, match="ufm.problem.Problem moved"):
        assert ufm.problem.Problem is ufm.Problem


def test_an_unknown_name_of_an_old_module_says_where_it_went():
    with pytest.raises(AttributeError, match="no attribute 'nothing'.*ufm.analysis.theory"):
        ufm.theory.nothing  # noqa: B018


def test_the_package_itself_uses_no_old_name():
    """Every kind imported, every room loaded: nothing of the package reads an old name."""
    code = ("import warnings; warnings.simplefilter('error', DeprecationWarning); import ufm; "
            "from ufm.running import registry; "
            "[registry.get(k) for k in registry.KIND_MODULES]; "
            "import ufm.cli, ufm.running.landscapes, ufm.analysis.landscape; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_new_names_warn_nothing():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        from ufm.analysis.theory import optimum  # noqa: F401
        from ufm.running.landscapes import benign_landscape  # noqa: F401
