"""predict(config, profile) -> Cost: latency, peak memory and energy of one training iteration,
as the mean over the config's training schedule.

Precision rule: a config is priced at its own ``training.precision`` (fp32 | bf16 | fp16): peak
FLOP/s is the profile's ``spec.peak_tflops`` entry for that dtype (fp32's when the device lists
none for it, said in the figure's detail), activations and casts are counted at its byte sizes
(``rep_tune.cost.work.Numerics``). A profile's ``dtype`` is the device's *preferred* training
dtype: what a preset built for that device (``rep-tune cost --preset``) and a search that
proposes the precision use; it does not override a config's own precision.

Schedule: a task runs ``epochs`` passes of ``images_per_task`` images (capped at
``iters_per_task`` iterations). With the selection query cached per sample, the first epoch
computes the query and later epochs read it, so the latency headline is the mean over the task's
iterations: (first-epoch iterations x uncached + the rest x cached) / iterations. ALD's keep
probabilities are averaged over the same iterations.
"""
from __future__ import annotations

from dataclasses import dataclass

from rep_tune import schedule as _schedule
from rep_tune.cost import counts as _counts
from rep_tune.cost import residual as _residual
from rep_tune.cost.latency import Rates, rates
from rep_tune.cost.residual import FWD, FWD_BWD, ResidualTable
from rep_tune.cost.memory import MiB, activation_bytes, allocator_overhead_mb, peak_bytes, resident_bytes
from rep_tune.figures import Cost, Figure


@dataclass(frozen=True)
class TaskSchedule:
    """Iterations of one task, and how many of them compute the selection query (first epoch)."""

    iterations: int              # per task (ALD averages over these)
    first_epoch: float           # of which the query is not cached yet
    epochs: int
    per_epoch: int | None        # iterations per epoch (None: the dataset size is unknown)

    def mean(self, cached: float, first_epoch: float) -> float:
        """Mean per iteration over the task of a figure that is ``first_epoch`` in the first epoch."""
        n = max(1, self.iterations)
        return (self.first_epoch * first_epoch + (n - self.first_epoch) * cached) / n

    def describe(self) -> str:
        if self.per_epoch is None:
            return f"{self.iterations} iterations/task over {self.epochs} epoch{'s' * (self.epochs > 1)}"
        return (f"{self.iterations} iterations/task ({self.epochs} epoch{'s' * (self.epochs > 1)} of "
                f"{self.per_epoch}{', capped' if self.iterations < self.epochs * self.per_epoch else ''})")


def task_schedule(config, batch: int | None = None, *, images_per_task: int | None = None,
                  iters_per_task: int | None = None, epochs: int | None = None) -> TaskSchedule:
    """The task schedule of ``config`` at ``batch``.

    With ``images_per_task``: ``epochs`` x ceil(images / batch) iterations, capped at
    ``iters_per_task`` (default ``training.iters_per_task``); the first epoch is one pass. Without
    it the task has ``iters_per_task`` (or the cap, or 1000) iterations in ``epochs`` equal epochs.
    """
    B = batch or config.training.batch_size
    E = max(1, epochs or config.training.epochs)
    cap = iters_per_task or config.training.iters_per_task
    if images_per_task:
        per = -(-int(images_per_task) // B)
        n = _schedule.iterations_per_task(images_per_task, B, E, cap)
        return TaskSchedule(n, float(min(per, n)), E, per)
    n = cap or _counts.DEFAULT_ITERS_PER_TASK
    return TaskSchedule(n, n / E, E, None)


def block_ms(c: _counts.Counts, r: Rates, res: ResidualTable | None = None,
             merges: ResidualTable | None = None) -> list[float]:
    """Time of each block when it runs (forward, matching, backward, launches); needs detail counts.
    With a residual table, the block's passes are scaled by its measured / roofline ratio; with a
    merge table (``residual.merge_table``), its merge by the timed merges' ratio."""
    if res is None and merges is None:
        return [r.time(b.work) for b in c.blocks]
    out = []
    for b in c.blocks:
        kind = FWD_BWD if b.grad else FWD
        passes = r.time(b.fwd + b.bwd) * (res.ratio(c.width, c.batch, b.tokens, kind) if res is not None else 1.0)
        match = r.time(b.match)
        if match and merges is not None:
            match *= merges.ratio(c.width, c.batch, b.eligible, kind)
        out.append(passes + match)
    return out


def blocks_time(c: _counts.Counts, r: Rates, res: ResidualTable | None = None,
                merges: ResidualTable | None = None) -> float:
    """Expected time of the blocks under ALD (each weighted by its keep probability)."""
    if res is None and merges is None:
        return r.time(c.blocks_work)
    return sum(b.keep * t for b, t in zip(c.blocks, block_ms(c, r, res, merges)))


def query_time(c: _counts.Counts, r: Rates, res: ResidualTable | None = None, first_epoch: bool = False) -> float:
    """Time of the selection query (a no-grad forward of the query model; 0 on a cache hit)."""
    t = r.time(c.query_first_epoch if first_epoch else c.query)
    return t * res.ratio(*c.query_shape, FWD) if res is not None and t else t


def latency_ms(c: _counts.Counts, r: Rates, first_epoch: bool = False, res: ResidualTable | None = None,
               merges: ResidualTable | None = None) -> float:
    """Expected time of one iteration (ALD-weighted blocks + query + the rest + overhead)."""
    if res is None and merges is None:
        return r.overhead + r.time(c.iteration_work(first_epoch))
    return r.overhead + blocks_time(c, r, res, merges) + query_time(c, r, res, first_epoch) + r.time(c.other)


def predict(config, profile, *, iters_per_task: int | None = None, t: int | None = None,
            batch: int | None = None, num_classes: int = _counts.DEFAULT_NUM_CLASSES,
            images_per_task: int | None = None, epochs: int | None = None,
            precision: str | None = None, keep: tuple[float, ...] | None = None) -> Cost:
    """Predicted cost of one REP training iteration of ``config`` on ``profile``.

    Batch = ``batch`` or training.batch_size; precision = ``precision`` or training.precision.
    Latency is the mean over the task schedule (``task_schedule``; ALD keep probabilities
    averaged over it, taken at iteration ``t`` when given, or ``keep`` as given: one per block);
    ``extras`` hold the steady-state
    (``latency_ms_cached``) and first-epoch (``latency_ms_first_epoch``) figures. Peak memory is
    the worst case over the task (every block ALD may drop runs); the keep-weighted figure is in
    extras.
    """
    B = batch or config.training.batch_size
    prec = precision or config.training.precision
    sched = task_schedule(config, B, images_per_task=images_per_task, iters_per_task=iters_per_task, epochs=epochs)
    r = rates(profile, prec)
    res = _residual.table(profile, r, prec)
    mres = _residual.merge_table(profile, r, prec)
    c = _counts.count(config, batch=B, t=t, iters_per_task=sched.iterations, num_classes=num_classes,
                      precision=prec, detail=res is not None or mres is not None, keep=keep)
    cal = profile.calibration if profile.calibrated else None
    source, detail = ("predicted", "calibrated cost model") if cal is not None else ("estimated", "uncalibrated")
    detail += f", {prec}" + ("" if r.peak_dtype == prec else f" at the {r.peak_dtype} peak (no {prec} figure)")
    if cal is not None and (cal.dtype or "fp32") != prec:
        detail += f", efficiency fitted at {cal.dtype}"
    if res is not None:
        detail += ", timed-block residuals"
    if mres is not None and c.match.launches:
        detail += ", timed merges"
    machine = profile.name
    cached, first = latency_ms(c, r, res=res, merges=mres), latency_ms(c, r, first_epoch=True, res=res, merges=mres)
    lat = sched.mean(cached, first)
    mem_over = cal.memory_overhead_mb if cal is not None else allocator_overhead_mb(profile)
    mem = peak_bytes(c, mem_over) / MiB
    energy = None
    if profile.spec.power_w:
        energy = Figure(profile.spec.power_w * lat / 1e3, "J", "estimated",
                        f"spec power {profile.spec.power_w:g} W x {source} time", machine)
    extras = dict(c.extras)
    extras.update(
        batch_size=float(B),
        latency_ms_cached=cached,
        latency_ms_first_epoch=first,
        first_epoch_iterations=float(sched.first_epoch),
        epochs=float(sched.epochs),
        query_ms=query_time(c, r, res),
        query_ms_first_epoch=query_time(c, r, res, first_epoch=True),
        blocks_ms=blocks_time(c, r, res, mres),
        other_ms=r.time(c.other) + r.overhead,
        flops_fwd=c.fwd.flops + c.query.flops + c.other.matmul_flops,
        flops_bwd=c.bwd.flops,
        flops_match=c.match.flops,
        bytes_moved=c.blocks_work.elementwise_bytes + c.query.elementwise_bytes + c.other.elementwise_bytes,
        activations_mb=activation_bytes(c) / MiB,
        resident_mb=resident_bytes(c) / MiB,
        peak_memory_mb_expected=peak_bytes(c, mem_over, expected=True) / MiB,
        params=c.params + c.trainable, trainable_params=c.trainable,
        optimizer_state=c.optimizer_state, workspace_mb=c.workspace_bytes / MiB,
    )
    schedule = "" if c.query == c.query_first_epoch else f"; mean over {sched.describe()}, query computed in the first"
    return Cost(latency_ms=Figure(lat, "ms", source, detail + schedule, machine),
                peak_memory_mb=Figure(mem, "MiB", source, detail + "; worst case over ALD", machine),
                energy_j=energy, scope="iteration", extras=extras)
