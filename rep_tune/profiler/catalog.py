"""The device-profile catalogue behind `rep-tune devices` (no torch import)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rep_tune.device import PROFILES_DIR, DeviceProfile
from rep_tune.shipped import PROFILES, display


@dataclass
class Entry:
    path: Path
    profile: DeviceProfile | None
    error: str = ""
    shipped: bool = False


def profile_paths(dirs: list[str | Path] = ()) -> list[tuple[Path, bool]]:
    """(path, shipped) of every *.yaml/*.json profile in the shipped folder, ./profiles and ``dirs``.

    A path in ``dirs`` that does not exist raises FileNotFoundError naming it (``--dir``).
    """
    seen: dict[Path, bool] = {}
    for x in dirs:
        if not Path(x).exists():
            raise FileNotFoundError(f"--dir {x}: no such file or folder")
    for d, shipped in [(PROFILES_DIR, True), (Path("profiles"), False), *[(Path(x), False) for x in dirs]]:
        if Path(d).is_dir():
            files = sorted([*Path(d).glob("*.yaml"), *Path(d).glob("*.yml"), *Path(d).glob("*.json")])
        elif Path(d).exists():
            files = [Path(d)]              # one file (read_mapping refuses devices and the like)
        else:
            files = []
        for f in files:
            r = f.resolve()
            seen[r] = seen.get(r, False) or shipped
    return list(seen.items())


def catalog(dirs: list[str | Path] = ()) -> list[Entry]:
    """Every profile found, loaded and validated; a broken file is an entry with its error.

    One bad file never stops the listing: any error while loading it (a bad value, an unreadable
    file, or an unforeseen failure, shown with its type) becomes that entry's error.
    """
    out = []
    for path, shipped in profile_paths(dirs):
        try:
            out.append(Entry(path, DeviceProfile.load(path), shipped=shipped))
        except (ValueError, OSError, KeyError) as e:
            out.append(Entry(path, None, str(e), shipped))
        except Exception as e:  # noqa: BLE001 - a listing shows every file, whatever broke one
            out.append(Entry(path, None, f"{type(e).__name__}: {e}", shipped))
    return out


def _where(e: Entry) -> str:
    """A shipped file as ``rep_tune/profiles/<file>``; a user's relative to here when under it."""
    if e.shipped:
        return display(e.path, PROFILES)
    try:
        return str(e.path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(e.path)


def row(e: Entry) -> dict[str, str]:
    """Table cells of one entry."""
    where = _where(e)
    if e.profile is None:
        return {"name": e.path.stem, "kind": "?", "peak TFLOPS": "", "GB/s": "", "memory / usable MB": "",
                "budgets (batch)": "", "calibrated": "", "file": f"{where}  INVALID: {e.error}"}
    p, s, b = e.profile, e.profile.spec, e.profile.budgets
    peak = s.peak_tflops.get(p.dtype)
    budget = ", ".join(x for x in (f"{b.latency_ms:g} ms" if b.latency_ms else "",
                                   f"{b.peak_memory_mb:g} MB" if b.peak_memory_mb else "",
                                   f"{b.energy_j:g} J" if b.energy_j else "") if x) or "none"
    return {"name": p.name, "kind": p.kind, "peak TFLOPS": f"{peak:.4g} {p.dtype}" if peak else "-",
            "GB/s": f"{s.memory_bandwidth_gbs:.4g}",
            "memory / usable MB": f"{s.memory_mb:.0f} / {s.usable_memory_mb:.0f}" if s.usable_memory_mb else f"{s.memory_mb:.0f} / -",
            "budgets (batch)": f"{budget} (b{b.batch_size})", "calibrated": "yes" if p.calibrated else "no",
            "file": where + ("" if e.shipped else "  (user)")}


def render(entries: list[Entry]) -> str:
    """Plain-text table (fixed-width columns)."""
    rows = [row(e) for e in entries]
    if not rows:
        return "no device profiles found"
    cols = list(rows[0])
    width = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    line = lambda r: "  ".join(r[c].ljust(width[c]) for c in cols).rstrip()   # noqa: E731
    return "\n".join([line({c: c for c in cols}), line({c: "-" * width[c] for c in cols}), *map(line, rows)])
