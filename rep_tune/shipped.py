"""The data that ships inside the package: device profiles and search spaces.

Read with ``importlib.resources``, so a plain ``pip install rep-tune`` (a wheel, no checkout) finds
them. rep-tune is always installed unzipped (a wheel unpacks into site-packages; an editable install
points at the checkout), so a shipped folder is a real folder on disk and is handed out as a Path.

User files win by path: :func:`shipped_file` only stands in for a path that does not exist.
"""
from __future__ import annotations

from importlib.resources import files
from pathlib import Path

PROFILES = "profiles"
SPACES = "search_spaces"


def shipped_dir(name: str) -> Path:
    """The folder ``name`` (``profiles``, ``search_spaces``) shipped inside the rep_tune package."""
    res = files("rep_tune") / name
    path = Path(str(res))
    if not path.is_dir():
        raise RuntimeError(f"rep_tune's shipped folder {name!r} is not a folder on disk ({res}); "
                           "rep-tune must be installed unzipped (pip install rep-tune)")
    return path


def shipped_file(path: str | Path, folder: str) -> Path | None:
    """The shipped file that a missing ``path`` stands for, else None.

    An existing path is always the user's file (None). A missing one stands for a shipped file when
    it is a shipped name (``jetson_orin``) or ``<folder>/<name>.yaml`` relative to here (the path
    the docs use from a checkout, e.g. ``profiles/jetson_orin.yaml``) whose file name ships.
    """
    p = Path(path)
    if p.exists():
        return None
    root = shipped_dir(folder)
    if len(p.parts) == 1:
        candidate = root / f"{p.name}.yaml"
    elif len(p.parts) == 2 and p.parts[0] == folder and p.suffix == ".yaml":
        candidate = root / p.name
    else:
        return None
    return candidate if candidate.is_file() else None


def resolve(path: str | Path, folder: str) -> Path:
    """``path`` itself when it exists, else the shipped file it stands for (:func:`shipped_file`).

    Neither: FileNotFoundError naming ``path`` and listing the shipped names.
    """
    p = Path(path)
    if p.exists():
        return p
    found = shipped_file(p, folder)
    if found is not None:
        return found
    names = ", ".join(sorted(f.stem for f in shipped_dir(folder).glob("*.yaml")))
    raise FileNotFoundError(f"{path}: no such file (shipped {folder.replace('_', ' ')}: {names or 'none'})")


def display(path: Path, folder: str) -> str:
    """A shipped file as ``rep_tune/<folder>/<file>`` (never an absolute path); others as given."""
    try:
        return str(Path("rep_tune") / folder / path.resolve().relative_to(shipped_dir(folder).resolve()))
    except ValueError:
        return str(path)
