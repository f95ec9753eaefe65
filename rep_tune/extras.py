"""Optional integrations installed as pip extras, imported on demand.

The core install stays lean; Ray, Ray Tune and optuna-dashboard come with ``rep-tune[ray]`` and
``rep-tune[dashboard]`` (pyproject's ``[project.optional-dependencies]``). Code that needs one
calls ``require``: the module, or a one-line error with the pip command that installs it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

# extra name -> what it adds (keep in step with pyproject.toml's optional-dependencies)
EXTRAS = {
    "ray": "Ray cluster sweeps and Ray Tune (ray[tune])",
    "dashboard": "optuna-dashboard",
    "digits": "scikit-learn, for the digits scenario",
}


class MissingExtra(ImportError):
    """An optional dependency is not installed; the message is one line with the pip command."""


def require(extra: str, module: str) -> ModuleType:
    """Import ``module`` (e.g. ``"ray.tune"``), which the pip extra ``extra`` installs.

    Raises MissingExtra, e.g. ``ray.tune is not installed: pip install 'rep-tune[ray]'``, when it is
    missing. An error raised inside an installed module is not masked: only the absence of
    ``module`` itself (or of its parent packages) counts as a missing extra.
    """
    if extra not in EXTRAS:
        raise ValueError(f"unknown rep-tune extra {extra!r}: expected one of {', '.join(EXTRAS)}")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        parts = module.split(".")
        if e.name not in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}:
            raise                      # the module is there but one of its own imports is broken
        raise MissingExtra(f"{module} is not installed ({EXTRAS[extra]}): "
                           f"pip install 'rep-tune[{extra}]'") from None
