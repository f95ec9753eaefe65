"""Where the search's trainings run: executor backends behind a registry (``--backend NAME``).

A backend is a name, the factory of its ``loop.Executor`` (``module:function``, imported only
when the backend is used, so the core never imports an optional package), an optional
``connect`` step that runs before any work (Ray: reach the cluster, in bounded time) and the
command-line flags only it reads: setting one of those for another backend is refused before
any work. The trial loop (``loop.run_trials``) is the same for every backend.

    optuna   worker threads in this process (``loop.ThreadExecutor``), the default
    ray      Ray tasks on a local instance or a cluster (``search.ray``; ``rep-tune[ray]``)
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from rep_tune.registry import Registry


@dataclass(frozen=True)
class Backend:
    """One executor backend (module docstring). ``flags``: (CLI flag, ``SearchSettings`` field) pairs."""

    name: str
    executor: str                        # "module:function": (Prepared) -> Executor
    connect: str | None = None           # "module:function": (SearchSettings, out) -> cluster handle
    flags: tuple[tuple[str, str], ...] = ()

    def _load(self, ref: str) -> Callable[..., Any]:
        module, _, fn = ref.partition(":")
        return getattr(importlib.import_module(module), fn)

    def make_executor(self, prepared: Any) -> Any:
        return self._load(self.executor)(prepared)

    def connect_to(self, settings: Any, out: Any) -> Any:
        """The backend's connection (None when it has none), made before any work."""
        return self._load(self.connect)(settings, out) if self.connect else None


BACKENDS: Registry[Backend] = Registry("--backend")


def register_backend(backend: Backend) -> Backend:
    return BACKENDS.add(backend.name, backend)


def get_backend(name: str) -> Backend:
    """The registered backend ``name``; ValueError naming the registered ones otherwise."""
    return BACKENDS.lookup(name)


def check_flags(settings: Any, defaults: Any) -> None:
    """Refuse a flag that only another backend reads, set away from its default."""
    mine = {f for _, f in get_backend(settings.backend).flags}
    for b in BACKENDS.values():
        for flag, attr in b.flags:
            if attr not in mine and getattr(settings, attr) != getattr(defaults, attr):
                raise ValueError(f"{flag}: applies to --backend {b.name} only, found --backend {settings.backend}")


register_backend(Backend("optuna", "rep_tune.search.loop:thread_executor"))
register_backend(Backend(
    "ray", "rep_tune.search.ray.executor:make_executor", connect="rep_tune.search.ray.cluster:connect_for_search",
    flags=(("--address", "address"), ("--cpus-per-trial", "cpus_per_trial"), ("--gpus-per-trial", "gpus_per_trial"),
           ("--proxy-port", "proxy_port"))))
