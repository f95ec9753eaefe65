"""Blocks run per training iteration: the search's proxy against the deployment it prices (a benchmark).

For the paper preset (L2P, ALD theta_min 0.5, gamma 0.001) on every shipped profile's deployment:
the blocks the cost model prices for the deployment (its own task length), and the blocks the
search's 12-iteration proxy expects without and with ``ald.horizon`` (the deployment's task
length). For ``--measure`` devices the real learner also trains the proxy at the search's fidelity
(5 tasks x 12 iterations, Split Fashion-MNIST) and reports the blocks it ran (one seed per run;
Bernoulli draws: about +-0.2 blocks over 60 iterations).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_ald_horizon.py [--measure jetson_orin]
"""
from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import torch

from rep_tune.config import EMBEDDED_BACKBONE, preset
from rep_tune.cost import counts
from rep_tune.device import shipped_profiles
from rep_tune.search.run import SEARCH_FIDELITY
from rep_tune.search.targets import ald_horizon, load_targets

RESULTS = Path(__file__).resolve().parent / "results"


def measured_blocks(cfg) -> float:
    from rep_tune.data.scenario import Scenario
    from rep_tune.runtime.learner import train
    res = train(cfg, Scenario(eval_per_class=2), progress=False, energy=False)
    return sum(r.blocks_run * r.iterations for r in res.per_task) / sum(r.iterations for r in res.per_task)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--measure", nargs="*", default=["jetson_orin"], help="profiles whose proxy the learner trains")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    lines = ["# blocks run per training iteration (of 12), paper preset (L2P), "
             f"proxy {EMBEDDED_BACKBONE} at {SEARCH_FIDELITY['training.iters_per_task']} it/task; host {socket.gethostname()}",
             "| profile | schedule | deployment it/task | deployment (cost model) | proxy, no horizon | proxy, ald.horizon | "
             "proxy measured (learner, seeds) |", "|---|---|---|---|---|---|---|"]
    for path in shipped_profiles():
        target = load_targets([path.stem])[0]
        for schedule in ("ald", "pld"):
            proxy = preset("paper", "l2p", EMBEDDED_BACKBONE, **SEARCH_FIDELITY, **{"ald.schedule": schedule})
            horizon = ald_horizon([target], proxy)
            deployed = target.deployed_config(proxy)
            dep = sum(counts.keep_probs(deployed, iters=horizon))
            plain = sum(counts.keep_probs(proxy, iters=12))
            scaled_cfg = proxy.replace(**{"ald.horizon": horizon})
            scaled = sum(counts.keep_probs(scaled_cfg, iters=12))
            meas = "-"
            if path.stem in args.measure:
                vals = [measured_blocks(scaled_cfg.replace(**{"training.seed": s})) for s in args.seeds]
                meas = ", ".join(f"{v:.2f}" for v in vals) + f" (mean {sum(vals) / len(vals):.2f})"
            lines.append(f"| {path.stem} | {schedule} | {horizon} | {dep:.2f} | {plain:.2f} | {scaled:.2f} | {meas} |")
    text = "\n".join(lines)
    print(text)
    out = RESULTS / f"bench_ald_horizon_{socket.gethostname()}.txt"
    out.write_text(text + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
