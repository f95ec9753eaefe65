"""`rep-tune profile`: measure this machine and write a device profile."""
from __future__ import annotations

import argparse

from rep_tune.cli.common import positive_float, threads_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer, smaller runs (seconds instead of minutes)")
    p.add_argument("--out", default="profiles/local.yaml", help="where to write the profile (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="device to profile (default: cuda if present)")
    p.add_argument("--watts", type=positive_float, default=None,
                   help="power figure for ESTIMATED energy where no counter is readable (default: a per-core guess on CPU)")
    p.add_argument("--threads", type=threads_int, default=None,
                   help="CPU threads to profile with (default: torch's, or 1 when the cores are busy)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rep_tune.profiler.device_profile import profile_device, summary
    profile = profile_device(quick=args.quick, device=args.device, power_w=args.watts, threads=args.threads,
                             progress=not args.no_progress)
    path = profile.save(args.out)
    print(summary(profile, path))
    return 0
