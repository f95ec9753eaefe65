"""Where a Ray search runs: a new local Ray instance, or an existing cluster, reached in bounded time.

Which Ray (``connect``):

  no ``--address``, no ``RAY_ADDRESS``   a new local instance for this search only
                                         (``ray.init(address="local")``), even when another Ray runs
                                         on this machine; it stops with the search
  ``RAY_ADDRESS=HOST:PORT``              that cluster (as every Ray tool does)
  ``--address HOST:PORT``                the cluster whose head listens there (``ray start --head
                                         --port PORT``); the flag wins over ``RAY_ADDRESS``
  ``--address auto``                     ``RAY_ADDRESS``, else the cluster ``ray start`` last started
                                         on this machine (``$RAY_TMPDIR/ray/ray_current_cluster``)

Before ``ray.init`` touches a cluster, ``probe`` asks its GCS (the head's registry) for its nodes
over gRPC with a ``PROBE_S`` deadline. ``ray.init`` itself retries a dead address for minutes
("Failed to connect to GCS"); the probe turns every way of not answering into one error naming
the flag or variable the address came from, within seconds:

  * nothing listens / unreachable / timeout     -> no Ray cluster answers at ADDR
  * a gRPC server that is not a Ray GCS         -> ADDR is not a Ray cluster's head
  * the cluster uses token authentication (Ray's default since 2.5x) and this machine has no
    token, or a different one                   -> says where the token is looked for
  * this machine is not one of the cluster's nodes (a Ray driver runs on a node: ``ray start
    --address ADDR`` here first, or run rep-tune on the head)
  * no node has the CPUs / GPUs one trial asks for (``--cpus-per-trial`` / ``--gpus-per-trial``):
    such tasks would wait forever

When the cluster uses token authentication and ``RAY_AUTH_MODE`` is unset, this process sets it
to ``token`` (Ray's drivers do not infer it when joining a cluster). Ray is imported through
``rep_tune.extras.require`` (the ``rep-tune[ray]`` extra); so is grpcio, which the probe uses.
"""
# Private Ray members used here: 4 uses (were 5; ``connect(temp_dir=)`` passed ``ray.init(_temp_dir=)``
# and is gone: no caller used it), each without a public equivalent:
#   * ``ray.init(_node_ip_address=...)`` (local instance, and joining a cluster): the address this
#     driver's node registers. A hidden option ray.init documents among its ``**kwargs``; Ray has no
#     public setting for it (``ray start --node-ip-address`` is the CLI's). Without it a local
#     instance listens on the machine's network address and a driver joining a cluster started on
#     loopback waits for a node at that address that never comes.
#   * ``ray._private.authentication.authentication_token_setup._enable_token_auth`` (fallback:
#     ``ray._raylet.Config.initialize``): what ``ray start`` calls to turn token auth on in this
#     process. Setting ``RAY_AUTH_MODE=token`` alone is not enough once ``ray`` is imported (the
#     probe imports it): Ray reads its config at import and caches it (checked on Ray 2.60:
#     the env var alone leaves ``is_token_auth_enabled()`` False until ``Config.initialize``).
#   * the probe's ``ray.core.generated`` gRPC stubs (not underscore-private, not a public API
#     either): the only way to ask a GCS for its nodes with a deadline without joining it
#     (``ray.init`` retries a dead address for minutes; ``ray.util.state`` needs the dashboard).
from __future__ import annotations

import ipaddress
import os
import socket
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rep_tune.extras import MissingExtra, require

PROBE_S = 5.0                 # gRPC deadline of the GCS probe (the whole connect stays well under 15 s)
LOCAL_OBJECT_STORE = 100 * 2**20   # a local instance's object store: trainings pass configs and results only
AUTH_ENV = "RAY_AUTH_MODE"


class ClusterError(ValueError):
    """No usable Ray: the message names the flag or variable and says what to do (CLI exit 2)."""


@dataclass
class Node:
    """One node of a cluster as its GCS lists it."""

    ip: str
    alive: bool
    resources: dict[str, float] = field(default_factory=dict)

    def has(self, cpus: float, gpus: float) -> bool:
        return self.resources.get("CPU", 0.0) >= cpus and self.resources.get("GPU", 0.0) >= gpus

    def describe(self) -> str:
        return f"{self.ip} ({self.resources.get('CPU', 0):g} CPU, {self.resources.get('GPU', 0):g} GPU)"


@dataclass
class Cluster:
    """The Ray this search runs on (``ray.init`` done): where, what, and how to let go of it."""

    address: str | None                   # GCS HOST:PORT; None: a local instance started here
    source: str                           # "--address" | "RAY_ADDRESS" | "local" | "already initialised"
    node_ip: str                          # this driver's node address (what workers reach it by)
    nodes: list[Node] = field(default_factory=list)
    owns: bool = True                     # ray.init was called here: ``shutdown`` calls ray.shutdown

    @property
    def local(self) -> bool:
        return self.address is None

    def fits(self, cpus: float, gpus: float) -> int:
        """Trials that fit at once (each on one node)."""
        return sum(int(min(n.resources.get("CPU", 0) // cpus if cpus else 1 << 20,
                           n.resources.get("GPU", 0) // gpus if gpus else 1 << 20))
                   for n in self.nodes if n.alive)

    def describe(self) -> str:
        where = "a local Ray instance" if self.local else f"the Ray cluster at {self.address} ({self.source})"
        alive = [n for n in self.nodes if n.alive]
        return f"{where}: {len(alive)} node(s), " + ", ".join(n.describe() for n in alive)

    def shutdown(self) -> None:
        if self.owns:
            import ray
            ray.shutdown()
            self.owns = False


def _ray():
    try:
        return require("ray", "ray")
    except MissingExtra as e:
        raise ClusterError(f"--backend ray: {e}") from None


# ---- address ---------------------------------------------------------------------------------
def ray_current_cluster_file() -> Path:
    """Where ``ray start`` records the address of the cluster it started last on this machine."""
    return Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "ray" / "ray_current_cluster"


def resolve_address(address: str | None) -> tuple[str | None, str]:
    """(HOST:PORT or None for a new local instance, where it came from). Raises ClusterError for a
    malformed address, and for ``auto`` when no cluster was started on this machine."""
    source = "--address"
    if address is None:
        env = os.environ.get("RAY_ADDRESS", "").strip()
        if not env:
            return None, "local"
        address, source = env, "RAY_ADDRESS"
    address = address.strip()
    if address == "local":
        return None, "local"
    if address == "auto":
        env = os.environ.get("RAY_ADDRESS", "").strip()
        path = ray_current_cluster_file()
        if env and env != "auto":
            address, source = env, "RAY_ADDRESS (--address auto)"
        elif path.is_file() and path.read_text().strip():
            address, source = path.read_text().strip(), f"--address auto ({path})"
        else:
            raise ClusterError(f"--address auto: no Ray cluster was started on this machine (no RAY_ADDRESS, "
                               f"no {path}); start one with `ray start --head --port 6379`, give --address "
                               f"HOST:PORT, or leave --address out to start a local Ray instance")
    if address.startswith("ray://"):
        raise ClusterError(f"{source}: expected the head's HOST:PORT (GCS), found a Ray Client address {address!r}; "
                           "run rep-tune on a node of the cluster (e.g. the head) with --address HOST:PORT")
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ClusterError(f"{source}: expected HOST:PORT of a Ray head (or auto), found {address!r}")
    return f"{host.strip('[]')}:{int(port)}", source


# ---- token -----------------------------------------------------------------------------------
def auth_token() -> tuple[str | None, str]:
    """Ray's token (as Ray looks it up: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token) and where."""
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token")
    try:
        text = path.read_text().strip()
    except OSError:
        return None, str(path)
    return (text or None), str(path)


# ---- probe -----------------------------------------------------------------------------------
def probe(address: str, source: str = "--address", timeout: float = PROBE_S) -> tuple[list[Node], bool]:
    """Ask the GCS at ``address`` for its nodes within ``timeout`` seconds: (nodes, token auth on)."""
    _ray()
    try:
        grpc = require("ray", "grpc")
    except MissingExtra as e:
        raise ClusterError(f"--backend ray: {e}") from None
    from ray.core.generated import gcs_service_pb2, gcs_service_pb2_grpc

    token, where = auth_token()
    stub_call = gcs_service_pb2_grpc.NodeInfoGcsServiceStub
    with grpc.insecure_channel(address) as channel:
        def ask(metadata):
            return stub_call(channel).GetAllNodeInfo(gcs_service_pb2.GetAllNodeInfoRequest(), timeout=timeout,
                                                     metadata=metadata)
        try:
            reply, auth = ask(None), False
        except grpc.RpcError as e:
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ClusterError(
                    f"{source}: no Ray cluster answers at {address} ({code.name.lower()}, deadline {timeout:g} s); "
                    f"start one with `ray start --head --port {address.rpartition(':')[2]}`, fix the address, or "
                    f"leave --address out (and unset RAY_ADDRESS) to start a local Ray instance") from None
            if code != grpc.StatusCode.UNAUTHENTICATED:
                raise ClusterError(f"{source}: {address} answered, but not as a Ray cluster's head "
                                   f"(gRPC {code.name}: {e.details()})") from None
            if token is None:
                raise ClusterError(
                    f"{source}: the Ray cluster at {address} requires token authentication and this machine has "
                    f"no token ({where}); copy the head's token there (`ray get-auth-token` on the head) or set "
                    "RAY_AUTH_TOKEN") from None
            try:
                reply, auth = ask([("authorization", f"Bearer {token}")]), True
            except grpc.RpcError as e2:
                if e2.code() == grpc.StatusCode.UNAUTHENTICATED:
                    raise ClusterError(f"{source}: the Ray cluster at {address} rejected the auth token from "
                                       f"{where}; use the head's (`ray get-auth-token` on the head)") from None
                raise ClusterError(f"{source}: the Ray cluster at {address} failed to list its nodes "
                                   f"(gRPC {e2.code().name}: {e2.details()})") from None
    nodes = [Node(n.node_manager_address, n.state == 0, {k: float(v) for k, v in n.resources_total.items()})
             for n in reply.node_info_list]
    return nodes, auth


def local_addresses() -> set[str]:
    """Every address of this machine's interfaces (what a node of the cluster here would be listed as)."""
    out = {"127.0.0.1", "::1", socket.gethostname()}
    try:
        import psutil
        for addrs in psutil.net_if_addrs().values():
            out.update(a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6))
    except Exception:
        pass
    try:
        out.update(socket.gethostbyname_ex(socket.gethostname())[2])
    except OSError:
        pass
    return out


def _is_here(ip: str, here: set[str]) -> bool:
    if ip in here:
        return True
    try:
        return ipaddress.ip_address(ip).is_loopback
    except ValueError:
        return False


def check_resources(nodes: list[Node], cpus: float, gpus: float, where: str) -> None:
    """Refuse per-trial resources no alive node has (Ray would keep such a task pending forever)."""
    alive = [n for n in nodes if n.alive]
    if not any(n.has(cpus, gpus) for n in alive):
        flag = "--gpus-per-trial" if gpus and not any(n.resources.get("GPU", 0) >= gpus for n in alive) else "--cpus-per-trial"
        value = gpus if flag == "--gpus-per-trial" else cpus
        raise ClusterError(f"{flag} {value:g}: no node of {where} has that many "
                           f"({', '.join(n.describe() for n in alive) or 'no alive node'})")


def _enable_token_auth() -> None:
    """RAY_AUTH_MODE=token for this process (and its children), as ``ray start`` does when it finds
    a token: Ray's driver does not infer it when joining a cluster, and caches its config."""
    try:
        from ray._private.authentication.authentication_token_setup import _enable_token_auth as enable
        enable()
    except ImportError:
        os.environ[AUTH_ENV] = "token"
        from ray._raylet import Config
        Config.initialize("")


# ---- connect ---------------------------------------------------------------------------------
def worker_env() -> dict[str, Any]:
    """runtime_env for the job: workers also import what this driver imports from source folders
    (a checkout, a train_fn defined beside the caller); appended to the node's own PYTHONPATH."""
    prefixes = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    paths = [p for p in sys.path if p and os.path.isdir(p)
             and not any(os.path.realpath(p).startswith(pre) for pre in prefixes)]
    paths = list(dict.fromkeys(os.path.abspath(p) for p in paths))
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([*paths, "${PYTHONPATH}"])}} if paths else {}


def connect(address: str | None = None, *, n_workers: int = 1, cpus_per_trial: float = 1.0,
            gpus_per_trial: float = 0.0) -> Cluster:
    """``ray.init`` on the Ray this search uses (module docstring); bounded, and checked before any work.

    A Ray already initialised in this process (a notebook, a test) is used as it is and left running.
    """
    ray = _ray()
    if not cpus_per_trial > 0 or cpus_per_trial != cpus_per_trial or cpus_per_trial == float("inf"):
        raise ClusterError(f"--cpus-per-trial: expected a number > 0, found {cpus_per_trial}")
    if not gpus_per_trial >= 0 or gpus_per_trial == float("inf"):
        raise ClusterError(f"--gpus-per-trial: expected a number >= 0, found {gpus_per_trial}")
    if ray.is_initialized():
        ctx = ray.get_runtime_context()
        nodes = [Node(n["NodeManagerAddress"], bool(n["Alive"]), dict(n.get("Resources", {}))) for n in ray.nodes()]
        cluster = Cluster(getattr(ctx, "gcs_address", None) or "this process's Ray", "already initialised",
                          ray.util.get_node_ip_address(), nodes, owns=False)
        check_resources(nodes, cpus_per_trial, gpus_per_trial, cluster.describe())
        return cluster
    resolved, source = resolve_address(address)
    quiet = dict(include_dashboard=False, log_to_driver=False, configure_logging=False, runtime_env=worker_env())
    if resolved is None:
        import logging
        logging.getLogger("ray").setLevel(logging.WARNING)
        ray.init(address="local", num_cpus=max(1, int(round(n_workers * cpus_per_trial))),
                 object_store_memory=LOCAL_OBJECT_STORE, _node_ip_address="127.0.0.1", **quiet)
        nodes = [Node(n["NodeManagerAddress"], bool(n["Alive"]), dict(n.get("Resources", {}))) for n in ray.nodes()]
        cluster = Cluster(None, "local", "127.0.0.1", nodes)
        try:
            check_resources(nodes, cpus_per_trial, gpus_per_trial, "this machine (a local Ray instance)")
        except ClusterError:
            cluster.shutdown()
            raise
        return cluster
    nodes, auth = probe(resolved, source)
    where = f"the Ray cluster at {resolved} ({source})"
    here = local_addresses()
    mine = [n for n in nodes if n.alive and _is_here(n.ip, here)]
    if not mine:
        raise ClusterError(f"{source}: this machine is not a node of {where} (its nodes: "
                           f"{', '.join(n.ip for n in nodes if n.alive) or 'none alive'}); run `ray start --address "
                           f"{resolved}` here first, or run rep-tune on the head node")
    check_resources(nodes, cpus_per_trial, gpus_per_trial, where)
    if auth and not os.environ.get(AUTH_ENV):
        _enable_token_auth()
    import logging
    logging.getLogger("ray").setLevel(logging.WARNING)
    # the driver joins as the node that is here, by the address that node registered (a cluster
    # started on loopback has no node at the machine's network address, and ray.init would wait for one)
    ray.init(address=resolved, _node_ip_address=mine[0].ip, **quiet)
    return Cluster(resolved, source, ray.util.get_node_ip_address(), nodes)


def connect_for_search(settings, out) -> Cluster:
    """The ``ray`` backend's connect step (``search.backends``): ``connect`` with the search's
    settings, then say what the cluster holds and how many trainings fit at once."""
    cluster = connect(settings.address, n_workers=settings.n_workers, cpus_per_trial=settings.cpus_per_trial,
                      gpus_per_trial=settings.gpus_per_trial)
    print(f"ray: {cluster.describe()}; {settings.n_workers} training(s) at once, {settings.cpus_per_trial:g} CPU "
          f"and {settings.gpus_per_trial:g} GPU each", file=out)
    fits = cluster.fits(settings.cpus_per_trial, settings.gpus_per_trial)
    if fits < settings.n_workers:
        print(f"  note: the cluster runs {fits} such training(s) at once; the other submitted ones wait in Ray's "
              f"queue (--n-workers {fits} avoids it)", file=out)
    return cluster
