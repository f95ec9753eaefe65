"""Samplers and pruners behind registries: a registered one is usable by name (the CLI's choices
come from the same registry); an unknown name is refused naming the registered ones."""
from __future__ import annotations

import optuna
import pytest

from rep_tune.search.strategies import (PRUNERS, SAMPLERS, TaskPercentilePruner, make_pruner, make_sampler,
                                        register_sampler)


def test_registered_samplers_and_pruners_build_optuna_objects():
    assert {"tpe", "gp", "nsga2", "random"} <= set(SAMPLERS)
    assert isinstance(make_sampler("tpe", 0), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", 0), optuna.samplers.RandomSampler)
    assert isinstance(make_pruner("percentile"), TaskPercentilePruner)
    assert isinstance(make_pruner("task-percentile"), TaskPercentilePruner)     # alias
    assert isinstance(make_pruner("nop"), optuna.pruners.NopPruner)
    assert set(PRUNERS) == {"percentile", "median", "wilcoxon", "none"}


def test_a_new_sampler_is_one_registration():
    import argparse

    from rep_tune.cli.search import add_arguments
    register_sampler("qmc")(lambda seed: optuna.samplers.QMCSampler(seed=seed))
    try:
        assert isinstance(make_sampler("qmc", 1), optuna.samplers.QMCSampler)
        p = argparse.ArgumentParser()
        add_arguments(p)
        assert "qmc" in next(a for a in p._actions if a.dest == "sampler").choices   # the CLI offers it
    finally:
        del SAMPLERS["qmc"]


def test_unknown_names_list_the_registered_ones():
    with pytest.raises(ValueError, match="--sampler: expected one of tpe, gp, nsga2, random.*found 'cmaes'"):
        make_sampler("cmaes", 0)
    with pytest.raises(ValueError, match="--pruner: expected one of percentile, median, wilcoxon, none"):
        make_pruner("hyperband")


def test_backends_registry_and_backend_only_flags():
    from rep_tune.search.backends import BACKENDS, check_flags, get_backend
    from rep_tune.search.run import SearchSettings
    assert set(BACKENDS) == {"optuna", "ray"}
    with pytest.raises(ValueError, match="--backend: expected one of optuna, ray, found 'dask'"):
        get_backend("dask")
    check_flags(SearchSettings(backend="ray", address="10.0.0.1:6379"), SearchSettings())
    with pytest.raises(ValueError, match="--address: applies to --backend ray only, found --backend optuna"):
        check_flags(SearchSettings(address="10.0.0.1:6379"), SearchSettings())
    from rep_tune.search.loop import ThreadExecutor

    class P:   # a prepared search, as much of it as the optuna backend's factory reads
        study, trainer, settings = None, None, SearchSettings(n_workers=3)
    ex = get_backend("optuna").make_executor(P())
    assert isinstance(ex, ThreadExecutor) and ex.slots == 3
