"""Ray cluster sweeps against a real 2-node Ray cluster started here (``ray.cluster_utils.Cluster``).

One cluster for the module (head + one worker node, 1 CPU each, no dashboard, 100 MB object
stores). Trainings are replaced at the Trainer seam (``ray_fakes.NodeTrain``: a sleep per task,
and a record of the node and open files of the worker); the study, the loop, the gRPC storage
proxy, Ray's scheduling and the killed worker processes are real.
"""
from __future__ import annotations

import collections
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ray = pytest.importorskip("ray", reason="the rep-tune[ray] extra is not installed")

from rep_tune.cli import main  # noqa: E402
from rep_tune.data.scenario import Scenario  # noqa: E402
from rep_tune.search import record  # noqa: E402
from rep_tune.search.ray.cluster import ClusterError, connect, resolve_address  # noqa: E402
from rep_tune.search.optuna_backend import storage_url  # noqa: E402
from rep_tune.search.run import SearchSettings, search  # noqa: E402
from rep_tune.search.ray.storage_proxy import ProxyStudyRef  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from ray_fakes import NodeTrain  # noqa: E402
from search_fakes import PROXY, FakeTrain, wait_for_training, write_space  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FAKES = Path(__file__).parent / "search_fakes.py"
# every node, its GCS and the object store on loopback only: a test never listens on the machine's network address
NODE = dict(num_cpus=1, include_dashboard=False, object_store_memory=100 * 2**20, node_ip_address="127.0.0.1")


@pytest.fixture(scope="module")
def cluster():
    """A head and a worker node on this machine (Unix sockets need a short temp dir)."""
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Cluster writes its address file to Ray's temp folder ($RAY_TMPDIR, else <system temp>/ray), which
    # exists only where Ray ran before: a fresh machine has none (cluster.ray_current_cluster_file)
    from rep_tune.search.ray.cluster import ray_current_cluster_file
    ray_current_cluster_file().parent.mkdir(parents=True, exist_ok=True)
    temp = f"/tmp/rtc{os.getpid()}"
    c = Cluster(initialize_head=True, head_node_args=dict(NODE, temp_dir=temp))
    c.add_node(**NODE)
    yield c
    if ray.is_initialized():
        ray.shutdown()
    c.shutdown()


def _settings(tmp: Path, address: str, **kw) -> SearchSettings:
    base = dict(confirm_seeds=0, devices=["jetson_orin"], space=write_space(tmp / "space.yaml"), backbone=PROXY,
                scenario=Scenario(n_tasks=3), n_trials=4, timeout=None, n_workers=2, run_dir=str(tmp / "run"),
                progress=False, seed=0, backend="ray", address=address)
    base.update(kw)
    return SearchSettings(**base)


def _log(log_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in log_dir.glob("*.json")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- connecting ------------------------------------------------------------------------------
def test_no_cluster_answers_fails_within_seconds(tmp_path, capsys):
    port = _free_port()                        # nothing listens there
    t0 = time.monotonic()
    rc = main(["search", "--device", "jetson_orin", "--backbone", PROXY, "--backend", "ray", "--address", f"127.0.0.1:{port}",
               "--run-dir", str(tmp_path / "run"), "--no-progress"])
    elapsed = time.monotonic() - t0
    err = capsys.readouterr().err
    print(f"\nno cluster at 127.0.0.1:{port}: exit {rc} after {elapsed:.1f} s: {err.strip()}")
    assert rc == 2 and f"no Ray cluster answers at 127.0.0.1:{port}" in err and "--address" in err
    assert "Traceback" not in err and not (tmp_path / "run" / "study.db").exists()
    assert elapsed < 15                        # the bound: a stale address used to hang for minutes


def test_a_silent_listener_is_not_waited_on(tmp_path, capsys):
    """A port that accepts connections and never answers (a hung head, another service)."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(ClusterError) as e:
            connect(address)
        elapsed = time.monotonic() - t0
    print(f"\nsilent listener at {address}: {elapsed:.1f} s: {e.value}")
    assert "no Ray cluster answers" in str(e.value) or "not as a Ray cluster's head" in str(e.value)
    assert elapsed < 15 and not ray.is_initialized()


def test_addresses_are_resolved_before_ray_is_touched(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == (None, "local")          # a cluster running here is not joined uninvited
    monkeypatch.setenv("RAY_ADDRESS", "10.1.2.3:6379")
    assert resolve_address(None) == ("10.1.2.3:6379", "RAY_ADDRESS")
    assert resolve_address("127.0.0.1:7000") == ("127.0.0.1:7000", "--address")   # the flag wins
    monkeypatch.delenv("RAY_ADDRESS")
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    with pytest.raises(ClusterError, match="--address auto: no Ray cluster was started"):
        resolve_address("auto")
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text("10.9.9.9:6380\n")
    assert resolve_address("auto")[0] == "10.9.9.9:6380"
    for bad in ("nohost", "host:port", "h:70000", "ray://h:10001"):
        with pytest.raises(ClusterError, match="--address"):
            resolve_address(bad)
    assert main(["search", "--device", "jetson_orin", "--backbone", PROXY, "--cpus-per-trial", "2", "--no-progress"]) == 2
    assert "--cpus-per-trial: applies to --backend ray only" in capsys.readouterr().err


def test_a_missing_ray_extra_is_one_line_with_the_pip_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)            # as if rep-tune[ray] were not installed
    rc = main(["search", "--device", "jetson_orin", "--backbone", PROXY, "--backend", "ray",
               "--run-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "pip install 'rep-tune[ray]'" in err and "--backend ray" in err


@pytest.mark.slow
def test_every_node_and_the_driver_are_on_loopback_only(cluster):
    """No Ray process of the test listens on the machine's network address (only 127.0.0.1)."""
    from rep_tune.search.ray.cluster import connect
    c = connect(cluster.address)
    try:
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
        assert ray.util.get_node_ip_address() == "127.0.0.1"
        assert cluster.address.startswith("127.0.0.1:")
    finally:
        c.shutdown()


@pytest.mark.slow
def test_resources_no_node_has_are_refused(cluster):
    with pytest.raises(ClusterError, match=r"--gpus-per-trial 1: no node .* has that many"):
        connect(cluster.address, gpus_per_trial=1)
    with pytest.raises(ClusterError, match=r"--cpus-per-trial 2: no node"):
        connect(cluster.address, cpus_per_trial=2)
    assert not ray.is_initialized()


# ---- searching ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_trials_spread_over_both_nodes_through_the_storage_proxy(cluster, tmp_path):
    fake = NodeTrain(0.3, str(tmp_path / "log"))
    out = io.StringIO()
    t0 = time.monotonic()
    # no pruner: which trials a percentile pruner stops depends on how the two nodes' reports interleave
    outcome = search(_settings(tmp_path, cluster.address, n_trials=6, pruner="none"), train_fn=fake, out=out)
    wall = time.monotonic() - t0
    log = _log(tmp_path / "log")
    recs = record.read_all(outcome.study.get_trials())
    trained = [r for r in recs if r.paid]
    print(f"\n2-node Ray search: {len(recs)} trials, {len(trained)} trained in {wall:.1f} s, trainings per node "
          f"{dict(collections.Counter(e['node'][:8] for e in log))}, worker pids {sorted({e['pid'] for e in log})}")
    assert "2 node(s)" in out.getvalue()
    assert len(trained) == 6 == len(log) and all(r.state == TrialState.COMPLETE for r in trained)
    assert len({e["node"] for e in log}) == 2                          # both nodes trained
    assert all(e["pid"] != os.getpid() for e in log)                   # in Ray workers, not the driver
    assert not any(e["sqlite_open"] for e in log)                      # workers never opened the SQLite file
    assert all(len(r.task_acc) == 3 for r in trained)                  # per-task reports through the proxy
    assert all(r.devices["jetson_orin"].constraints for r in recs if r.state == TrialState.COMPLETE)
    assert not any(r.trained for r in recs if r.prescreened)
    assert [r.role for r in recs if r.role] == ["paper", "baseline"]


@pytest.mark.slow
def test_proxy_ref_reaches_the_study_without_its_file(cluster, tmp_path):
    """What a worker gets: a reference holding host, port and name only, opening a gRPC proxy."""
    from rep_tune.search.ray.executor import RayExecutor
    from rep_tune.search.run import prepare

    p = prepare(_settings(tmp_path, cluster.address), train_fn=FakeTrain(0.0), out=io.StringIO())
    try:
        ex = RayExecutor(p.study, p.trainer, p.cluster, pruner="percentile")
        ref = ex.study_ref
        assert isinstance(ref, ProxyStudyRef) and str(tmp_path) not in repr(vars(ref))
        opened = ref.open()                                         # through ref.storage(): the gRPC proxy
        assert isinstance(ref.storage(), optuna.storages.GrpcStorageProxy)
        assert opened.user_attrs[record.STUDY_CONSTRAINTS] == p.study.user_attrs[record.STUDY_CONSTRAINTS]
        ex.close()
        with pytest.raises(ConnectionError):
            ProxyStudyRef(ref.host, ref.port, ref.study_name, "none").storage(timeout=1.0)     # proxy stopped
    finally:
        p.cluster.shutdown()


@pytest.mark.slow
def test_a_killed_worker_fails_its_trial_and_the_search_goes_on(cluster, tmp_path):
    fake = NodeTrain(0.3, str(tmp_path / "log"), kill_first=True)
    outcome = search(_settings(tmp_path, cluster.address, n_trials=4), train_fn=fake, out=io.StringIO())
    recs = record.read_all(outcome.study.get_trials())
    killed_hash = (tmp_path / "log" / "killed").read_text()
    failed = [r for r in recs if r.state == TrialState.FAIL]
    print(f"\nkilled worker: trial {[r.number for r in failed]} error {failed[0].error if failed else None!r}")
    assert len(failed) == 1 and failed[0].config_hash == killed_hash
    assert failed[0].error.startswith("Ray worker lost") and failed[0].paid     # a crash is a paid, failed trial
    assert len(failed[0].task_acc) == 1                                       # killed after its first task
    assert sum(r.paid for r in recs) == 4 and sum(r.state == TrialState.COMPLETE and r.trained for r in recs) == 3
    assert not [r for r in recs if r.state == TrialState.RUNNING]


@pytest.mark.slow
def test_resume_a_ray_run_after_its_driver_was_killed(cluster, tmp_path):
    spec = dict(devices=["jetson_orin"], space=write_space(tmp_path / "space.yaml"), backbone=PROXY,
                scenario={"n_tasks": 3}, n_trials=5, timeout=None, n_workers=1, run_dir=str(tmp_path / "run"),
                progress=False, seed=0, task_s=1.0, backend="ray", address=cluster.address)
    (tmp_path / "s.json").write_text(json.dumps(spec))
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    proc = subprocess.Popen([sys.executable, str(FAKES), str(tmp_path / "s.json")], env=env, cwd=ROOT,
                            stdout=open(tmp_path / "out", "w"), stderr=subprocess.STDOUT)
    url = storage_url(tmp_path / "run")
    wait_for_training(tmp_path / "run", proc, paid=2, what=f"the Ray search (output: {tmp_path / 'out'})")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = {r.number: r for r in record.read_all(optuna.load_study(study_name=None, storage=url).trials)}
    running = [n for n, r in before.items() if r.state == TrialState.RUNNING and r.trained]
    finished = {n: (r.state, r.value) for n, r in before.items() if r.state.is_finished()}
    assert len(running) == 1

    settings = SearchSettings.resume(tmp_path / "run", progress=False)
    assert (settings.backend, settings.address) == ("ray", cluster.address)     # run.yaml keeps where it ran
    outcome = search(settings, train_fn=FakeTrain(0.05), out=io.StringIO())
    after = {r.number: r for r in record.read_all(outcome.study.get_trials())}
    for n, (state, value) in finished.items():                 # every earlier finished trial is kept
        assert after[n].state == state and after[n].value == pytest.approx(value)
    killed = after[running[0]]
    assert killed.state == TrialState.FAIL and "is gone" in killed.interrupted and not killed.paid
    assert sum(r.paid for r in after.values()) == 5
    assert not [r for r in after.values() if r.state == TrialState.RUNNING]
