"""A subcommand whose third-party package is absent (optuna on a bare GPU image) says so; the others run."""
from __future__ import annotations

import subprocess
import sys
import textwrap


def test_cost_runs_and_search_names_the_missing_package_without_optuna():
    code = textwrap.dedent("""
        import builtins, sys
        real = builtins.__import__
        def imp(name, *a, **k):
            if name.split('.')[0] in ('optuna', 'ray', 'optuna_dashboard'):
                raise ModuleNotFoundError(f"No module named {name.split('.')[0]!r}", name=name.split('.')[0])
            return real(name, *a, **k)
        builtins.__import__ = imp
        from rep_tune.cli import main
        print('COST', main(['cost', '--device', 'jetson_orin']))
        print('SEARCH', main(['search', '--device', 'jetson_orin']))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert "COST 0" in out.stdout and "SEARCH 2" in out.stdout, out.stderr[-2000:]
    assert "rep-tune search: error: needs the package 'optuna'" in out.stderr
    assert "Traceback" not in out.stderr
