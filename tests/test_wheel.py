"""A plain (non-editable) install works: the wheel carries the shipped profiles and search spaces.

Builds the wheel from a copy of the source (the checkout stays clean), installs it into a fresh venv
without pip's network or dependencies, and lets that venv see this venv's already-installed
dependencies through a ``.pth`` line naming this venv's site-packages. A directory added by a
``.pth`` line is not itself a site directory, so this venv's ``__editable__`` finder (a ``.pth``
there) is not run: ``import rep_tune`` must be the wheel's copy, which the test checks first. Then,
from a folder that is not the checkout (HOME there too): ``rep-tune devices``, ``rep-tune cost
--device jetson_orin`` and a 1-trial search with ``--device profiles/jetson_orin.yaml``.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _run(argv: list, cwd: Path, env: dict, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv bin folder, a work folder outside the checkout, env) with the built wheel installed."""
    from rep_tune.data.idx import find_fashion_mnist

    try:
        find_fashion_mnist()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HOME=str(tmp), PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")

    # the source, copied: a build writes build/ and *.egg-info next to pyproject.toml
    src = tmp / "src"
    src.mkdir()
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    shutil.copytree(ROOT / "rep_tune", src / "rep_tune",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.coarse.safetensors"))
    _ok(_run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
              "-w", tmp / "dist", src], tmp, env, timeout=300))
    wheel, = (tmp / "dist").glob("rep_tune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"rep_tune/shipped.py", "rep_tune/profiles/jetson_orin.yaml",
            "rep_tune/search_spaces/l2p.yaml"} <= names

    venv = tmp / "v"
    _ok(_run([sys.executable, "-m", "venv", "--without-pip", venv], tmp, env))
    py = venv / "bin" / "python"
    # installed before the .pth exists, so pip sees no other rep-tune in that venv
    _ok(_run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index", wheel], tmp, env,
             timeout=300))
    site = Path(_ok(_run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp, env)).strip())
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_rep_tune_test_deps.pth").write_text("".join(f"{d}\n" for d in sorted(ours)))

    work = tmp / "work"
    work.mkdir()
    return venv / "bin", site, work, env


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    bin_, site, work, env = installed
    probe = ("import sys, rep_tune, rep_tune.device as d, rep_tune.search.space as s; "
             "print(rep_tune.__file__); print(d.PROFILES_DIR); print(s.SPACES_DIR); "
             "print(sorted(m for m in sys.modules if 'editable' in m)); "
             "print([type(f).__name__ for f in sys.meta_path if 'editable' in repr(f).lower()])")
    out = _ok(_run([bin_ / "python", "-c", probe], work, env)).splitlines()
    assert Path(out[0]).resolve().is_relative_to(site.resolve()), out[0]
    assert not Path(out[0]).resolve().is_relative_to(ROOT)
    assert Path(out[1]).resolve() == (site / "rep_tune" / "profiles").resolve()
    assert Path(out[2]).resolve() == (site / "rep_tune" / "search_spaces").resolve()
    assert out[3:] == ["[]", "[]"], "this venv's editable finder leaked into the wheel's venv"


def test_devices_and_cost_from_a_plain_install(installed):
    bin_, site, work, env = installed
    out = _ok(_run([bin_ / "rep-tune", "devices"], work, env))
    assert "no device profiles found" not in out
    assert re.search(r"^jetson_orin\s", out, re.M) and "rep_tune/profiles/jetson_orin.yaml" in out
    assert str(site) not in out                        # the file column is never an absolute path
    out = _ok(_run([bin_ / "rep-tune", "cost", "--device", "jetson_orin"], work, env))
    assert re.search(r"latency_ms: [0-9.]+ / [0-9.]+ ms", out), out


def test_a_one_trial_search_from_a_plain_install(installed):
    bin_, site, work, env = installed
    assert not (work / "profiles").exists() and not (work / "search_spaces").exists()
    (work / "tiny.yaml").write_text("dataset: fashion-mnist\nn_tasks: 2\nmax_per_class: 8\neval_per_class: 5\n")
    run = work / "run"
    r = _run([bin_ / "rep-tune", "search", "--device", "profiles/jetson_orin.yaml", "--scenario", "tiny.yaml",
              "--run-dir", run, "--n-trials", "1", "--timeout", "120", "--no-progress", "--iters-per-task", "1",
              "--threads", "1", "--no-prescreen", "--confirm", "1,1,2", "--confirm-iters", "1"], work, env,
             timeout=300)
    _ok(r)
    best = run / "best_jetson_orin.yaml"
    assert best.is_file() and "l2p" in best.read_text()
    # a shipped space by its checkout path and a missing file of the user's
    r = _run([bin_ / "rep-tune", "search", "--device", "jetson_orin", "--space", "search_spaces/nope.yaml",
              "--run-dir", work / "run2", "--no-progress"], work, env)
    assert r.returncode == 2 and "search_spaces/nope.yaml" in r.stderr and "l2p" in r.stderr, r.stderr
