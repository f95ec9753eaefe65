"""`rep-tune profile`: measure this machine and write a device profile.

Repeated probes must agree within ``probe.AGREEMENT`` (5 %; ``rep_tune.profiler.device_profile``):
otherwise the machine was busy and no profile is written: one line on stderr naming the probe
and its spread, exit 75 (EX_TEMPFAIL: rerun on a quiet machine). ``--allow-noisy`` writes it
anyway with ``calibration.noisy: true`` and a warning.
"""
from __future__ import annotations

import argparse
import sys

from rep_tune.cli.common import positive_float, threads_int


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="fewer, smaller runs (seconds instead of minutes)")
    p.add_argument("--out", default="profiles/local.yaml", help="where to write the profile (default: %(default)s)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="device to profile (default: cuda if present)")
    p.add_argument("--watts", type=positive_float, default=None,
                   help="power figure for ESTIMATED energy where no counter is readable (default: a per-core guess on CPU)")
    p.add_argument("--threads", type=threads_int, default=None,
                   help="CPU threads to profile with (default: torch's, or 1 when the cores are busy)")
    p.add_argument("--allow-noisy", action="store_true",
                   help="write the profile even when repeated probes disagree by more than 5 %% (a busy machine), "
                        "its calibration marked noisy (default: refuse, exit 75)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from rep_tune.profiler.device_profile import MachineBusy, noisy_reason, profile_device, summary
    try:
        profile = profile_device(quick=args.quick, device=args.device, power_w=args.watts, threads=args.threads,
                                 progress=not args.no_progress, allow_noisy=args.allow_noisy)
    except MachineBusy as e:
        print(f"rep-tune profile: {e}: rerun on a quiet machine, or pass --allow-noisy to write it marked noisy",
              file=sys.stderr)
        return e.exit_code
    path = profile.save(args.out)
    print(summary(profile, path))
    reason = noisy_reason(profile)
    if reason:
        print(f"rep-tune profile: warning: {reason}: written to {path} with calibration.noisy: true",
              file=sys.stderr)
    return 0
