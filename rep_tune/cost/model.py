"""predict(config, profile) -> Cost: latency, peak memory and energy of one training iteration."""
from __future__ import annotations

from rep_tune.cost import counts as _counts
from rep_tune.cost.latency import rates
from rep_tune.cost.memory import MB, activation_bytes, peak_bytes, resident_bytes
from rep_tune.figures import Cost, Figure


def block_ms(c: _counts.Counts, r) -> list[float]:
    """Time of each block when it runs (forward, matching, backward, launches); needs detail counts."""
    out = []
    for b in c.blocks:
        w = (b.fwd[0] + b.bwd[0] + b.match[0], b.fwd[1] + b.bwd[1], b.fwd[2] + b.bwd[2] + b.match[2])
        out.append(r.time(w, b.ops))
    return out


def latency_ms(c: _counts.Counts, r, first_epoch: bool = False) -> float:
    """Expected time of one iteration (ALD-weighted blocks + query + the rest + overhead)."""
    q = r.time(c.query_first_epoch, c.query_ops_first_epoch) if first_epoch else r.time(c.query, c.query_ops)
    return r.overhead + r.time(c.other, c.other_ops) + q + r.time(c.work, c.ops)


def predict(config, profile, *, iters_per_task: int | None = None, t: int | None = None,
            batch: int | None = None, num_classes: int = _counts.DEFAULT_NUM_CLASSES) -> Cost:
    """Predicted cost of one REP training iteration of ``config`` on ``profile``.

    Batch = ``batch`` or config.training.batch_size; dtype = profile.dtype. ALD keep probabilities
    are averaged over a task of ``iters_per_task`` iterations (default: training.iters_per_task, else
    1000) unless an iteration ``t`` is given. Latency is the steady state (query cache hit when the
    selection surrogate is cached); the first-epoch figure is in ``extras``. Peak memory is the
    worst case over the task (every block ALD may drop runs); the keep-weighted figure is in extras.
    """
    c = _counts.count(config, batch=batch, dtype=profile.dtype, t=t, iters_per_task=iters_per_task,
                      num_classes=num_classes, detail=False)
    r = rates(profile)
    cal = profile.calibration if profile.calibrated else None
    if cal is not None:
        source, detail = "predicted", "calibrated cost model"
    else:
        source, detail = "estimated", "uncalibrated"
    machine = profile.name
    lat = latency_ms(c, r)
    mem_over = cal.memory_overhead_mb if cal is not None else 0.0
    mem = peak_bytes(c, mem_over) / MB
    energy = None
    if profile.spec.power_w:
        energy = Figure(profile.spec.power_w * lat / 1e3, "J", "estimated",
                        f"spec power {profile.spec.power_w:g} W x {source} time", machine)
    fmm, fat, _ = c.fwd
    bmm, bat, _ = c.bwd
    extras = dict(c.extras)
    extras.update(
        batch_size=float(c.batch),
        latency_ms_first_epoch=latency_ms(c, r, first_epoch=True),
        query_ms=r.time(c.query, c.query_ops),
        query_ms_first_epoch=r.time(c.query_first_epoch, c.query_ops_first_epoch),
        flops_fwd=fmm + fat + c.query[0] + c.query[1] + c.other[0],
        flops_bwd=bmm + bat,
        flops_match=c.match[0],
        bytes_moved=c.work[2] + c.query[2] + c.other[2],
        activations_mb=activation_bytes(c) / MB,
        resident_mb=resident_bytes(c) / MB,
        peak_memory_mb_expected=peak_bytes(c, mem_over, expected=True) / MB,
        params=c.params + c.trainable, trainable_params=c.trainable,
        optimizer_state=c.optimizer_state, workspace_mb=c.dtype_bytes * c.transient_elems / MB,
    )
    return Cost(latency_ms=Figure(lat, "ms", source, detail, machine),
                peak_memory_mb=Figure(mem, "MiB", source, detail + "; worst case over ALD", machine),
                energy_j=energy, scope="iteration", extras=extras)
