"""Optional extras: require() imports or says the pip command; pyproject declares the extras."""
from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

from rep_tune.extras import EXTRAS, MissingExtra, require

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_installed_extra_is_imported():
    mod = require("dashboard", "optuna_dashboard")
    assert mod is sys.modules["optuna_dashboard"] and hasattr(mod, "wsgi")


def test_missing_extra_gives_one_line_with_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)            # as if ray were not installed
    monkeypatch.setitem(sys.modules, "ray.tune", None)       # (even when another test imported it)
    with pytest.raises(MissingExtra) as e:
        require("ray", "ray.tune")
    msg = str(e.value)
    assert msg == "ray.tune is not installed (Ray cluster sweeps and Ray Tune (ray[tune])): pip install 'rep-tune[ray]'"
    assert isinstance(e.value, ImportError) and "\n" not in msg


def test_missing_submodule_of_an_installed_package_is_a_missing_extra():
    with pytest.raises(MissingExtra, match=r"pip install 'rep-tune\[dashboard\]'"):
        require("dashboard", "optuna_dashboard.no_such_submodule")


def test_a_broken_import_inside_an_installed_module_is_not_masked(tmp_path, monkeypatch):
    (tmp_path / "rep_test_broken_pkg").mkdir()
    (tmp_path / "rep_test_broken_pkg" / "__init__.py").write_text("import rep_test_not_a_module_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as e:
        require("ray", "rep_test_broken_pkg")
    assert not isinstance(e.value, MissingExtra) and e.value.name == "rep_test_not_a_module_xyz"


def test_unknown_extra_is_refused():
    with pytest.raises(ValueError, match="unknown rep-tune extra 'gpu': expected one of ray, dashboard"):
        require("gpu", "json")


def test_pyproject_declares_the_extras_outside_the_core():
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    extras = project["optional-dependencies"]
    assert set(EXTRAS) <= set(extras)
    assert extras["ray"] == ["ray[tune]>=2.9", "grpcio"] and extras["dashboard"] == ["optuna-dashboard>=0.21"]
    core = " ".join(project["dependencies"])
    assert "ray" not in core and "optuna-dashboard" not in core
