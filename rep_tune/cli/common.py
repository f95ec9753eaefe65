"""Helpers shared by several subcommands."""
from __future__ import annotations

import argparse
import os


def add_threads_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, help="torch CPU threads (default: 1 when the cores are busy, else torch's "
                                               "default; oversubscribed OpenMP threads run several times slower)")


def set_threads(requested: int | None) -> int:
    """Set torch's intra-op threads: as requested, else 1 when other work keeps the cores busy."""
    import torch

    if requested:
        n = requested
    else:
        busy = os.getloadavg()[0] >= 0.5 * (os.cpu_count() or 1)
        n = 1 if busy else torch.get_num_threads()
    torch.set_num_threads(n)
    return n
