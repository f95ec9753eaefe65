"""Workers on other nodes reach the driver's study through Optuna's gRPC storage proxy, never its file.

The driver keeps ``<run>/study.db`` (SQLite: one host, and this process is its only writer in a
Ray run) and serves the *same storage object* it uses itself over gRPC
(``optuna.storages._grpc.server.make_server``, what ``optuna.storages.run_grpc_proxy_server``
runs, kept as a server object so that the search can stop it). A worker opens
``optuna.storages.GrpcStorageProxy(host=, port=)`` through ``ProxyStudyRef.open()``: it reports
per-task accuracy and asks the pruner exactly as a local worker thread does, and no node but the
driver's needs the run folder. Every record, claim and constraint is still written by the
driver's loop (``record.py``), so the semantics are those of the local search.

The proxy speaks plain (insecure) gRPC, as Optuna's does: it listens on the driver's node address
that Ray workers reach it by (``127.0.0.1`` for a local Ray instance), on ``port`` (0: a free
one; ``--proxy-port`` when a firewall needs a fixed one). Anyone who can reach that port can
read and write the study while the search runs: keep the cluster network private.
"""
# Private Optuna/Ray members used here: 1, ``optuna.storages._grpc.server.make_server``. The public
# ``optuna.storages.run_grpc_proxy_server`` is that function plus ``start()`` and
# ``wait_for_termination()``: it blocks its caller forever and hands out no server to stop, so a
# search could never close its port (``StorageProxy.stop``). Clients use the public
# ``optuna.storages.GrpcStorageProxy``.
from __future__ import annotations

import socket
import warnings

import optuna

from rep_tune.extras import MissingExtra, require

READY_S = 15.0            # a worker waits this long for the proxy before its trial fails


class ProxyStudyRef:
    """How a worker in another process (any node) opens the study: the driver's storage proxy."""

    def __init__(self, host: str, port: int, study_name: str, pruner: str):
        self.host, self.port, self.study_name, self.pruner = host, int(port), study_name, pruner

    def __repr__(self) -> str:
        return f"ProxyStudyRef({self.host}:{self.port}, {self.study_name!r})"

    def storage(self, timeout: float = READY_S) -> optuna.storages.BaseStorage:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            proxy = optuna.storages.GrpcStorageProxy(host=self.host, port=self.port)
        proxy.wait_server_ready(timeout=timeout)
        return proxy

    def open(self) -> optuna.Study:
        from rep_tune.search.strategies import make_pruner

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.load_study(study_name=self.study_name, storage=self.storage(), pruner=make_pruner(self.pruner))


def free_port(host: str) -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class StorageProxy:
    """A gRPC server in this process serving ``storage`` (Optuna's storage proxy); ``stop()`` ends it."""

    def __init__(self, storage: optuna.storages.BaseStorage, host: str = "127.0.0.1", port: int = 0):
        try:
            require("ray", "grpc")
        except MissingExtra as e:
            raise ValueError(f"--backend ray: the study is served to workers over gRPC: {e}") from None
        from optuna.storages._grpc.server import make_server

        self.host = host
        self.port = int(port) or free_port(host)
        try:
            self._server = make_server(storage, host, self.port)
            self._server.start()
        except RuntimeError as e:            # grpc: "Failed to bind to address"
            raise ValueError(f"--proxy-port {self.port}: cannot serve the study on {host}:{self.port} ({e})") from None

    def ref(self, study_name: str, pruner: str) -> ProxyStudyRef:
        return ProxyStudyRef(self.host, self.port, study_name, pruner)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=1.0).wait(5.0)
            self._server = None
