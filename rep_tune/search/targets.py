"""Targets: the devices a search serves, what is deployed on each, and where its costs come from.

Proxy accuracy, deployment cost. The search trains a *proxy* (the search's backbone, at the
search's reduced fidelity) for accuracy, and prices the same knobs on the *deployment*: the
profile's ``workload`` (e.g. ViT-B/16@224 with a ViT-Ti surrogate, batch 16, 5 epochs of 5,000
images per task), at the deployment's schedule, with ``rep_tune.cost.deploy.predict_deployed``.
``--deploy-backbone NAME`` replaces the workload's backbone (its image size becomes NAME's native
one); ``--deploy-epochs`` / ``--deploy-iters-per-task`` replace its schedule. A knob maps 1:1 only
when depth and token layout agree (``map_to_deployment`` raises ``MappingError`` saying why); the
search refuses such configs before any training. The accuracy is *direct* when the proxy is the
deployed model, else *proxy* (measured on the proxy backbone and scenario).

Local targets (``--device local``, or a profile written by ``rep-tune profile`` on this host):
the proxy itself runs here, so the local deployment *is* the proxy (direct accuracy), and its cost
is *measured* during training (the runtime's timer and allocator peak); pre-screening, which
happens before training, uses the cost model's prediction at the search's schedule.

Costs are compared with budgets at the profile's ``budgets.batch_size``.
"""
from __future__ import annotations

import dataclasses
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from rep_tune.config import RepConfig
from rep_tune.device import DeviceProfile, Workload, shipped_profiles
from rep_tune.figures import METRICS, Cost
from rep_tune.search.budgets import DeviceBudgets
from rep_tune.shipped import PROFILES, shipped_file


@dataclass
class Deployment:
    """What a target deploys: backbone, surrogate, image size, schedule; and how accuracy relates to it."""

    backbone: str
    surrogate: str | None
    img_size: int | None
    epochs: int
    iters_per_task: int | None
    batch_size: int
    accuracy: str                 # direct | proxy
    workload: Workload | None     # None for a local target (the proxy itself)

    @property
    def iterations_per_task(self) -> int | None:
        """Training iterations per task of the deployed run (None for a local target: the proxy's own)."""
        return self.workload.iterations(self.batch_size) if self.workload is not None else None

    def to_dict(self) -> dict:
        out = {"backbone": self.backbone, "surrogate": self.surrogate, "img_size": self.img_size,
               "epochs": self.epochs, "iters_per_task": self.iters_per_task, "batch_size": self.batch_size,
               "accuracy": self.accuracy}
        if self.workload is not None:
            out.update(images_per_task=self.workload.images_per_task, dataset=self.workload.dataset,
                       num_classes=self.workload.num_classes,
                       iterations_per_task=self.iterations_per_task)
        return out


def same_model(a: str, b: str) -> bool:
    """Same architecture and weights: equal names, or equal up to a missing (default) timm tag."""
    (an, _, at), (bn, _, bt) = a.partition("."), b.partition(".")
    return an == bn and (at == bt or not at or not bt)


@dataclass
class Target:
    """One device the search serves, of one of two kinds (``kind``): a device profile (this class:
    the knobs priced on its deployment by the cost model) or this machine (``LocalTarget``: the
    proxy is the deployment, its costs measured while it trains). Everything that differs between
    them is a method here; nothing outside asks which kind it is."""

    profile: DeviceProfile
    key: str                      # slug for attribute keys (``latency_ms@jetson_orin``) and file names
    path: str | None = None
    budgets: DeviceBudgets | None = None
    deploy_backbone: str | None = None      # --deploy-backbone (None: the workload's)
    deploy_epochs: int | None = None        # --deploy-epochs (None: the workload's)
    deploy_iters_per_task: int | None = None
    precisions: tuple[str, ...] | None = None   # --export-target: the precisions its runtime trains at (None: any)

    kind = "device"
    cost_source = "predicted"     # where its cost figures come from

    # ---- the deployment ------------------------------------------------------------------
    def workload(self) -> Workload:
        """The profile's workload with the user's overrides."""
        w = self.profile.workload
        changes = {}
        if self.deploy_backbone:
            from rep_tune.archs import arch_of
            changes["backbone"] = self.deploy_backbone
            changes["img_size"] = arch_of(self.deploy_backbone).img_size
        if self.deploy_epochs:
            changes["epochs"] = self.deploy_epochs
        if self.deploy_iters_per_task:
            changes["iters_per_task"] = self.deploy_iters_per_task
        return dataclasses.replace(w, **changes) if changes else w

    def _deploy_profile(self) -> DeviceProfile:
        w = self.workload()
        return self.profile if w is self.profile.workload else dataclasses.replace(self.profile, workload=w)

    def deployment(self, proxy: RepConfig) -> Deployment:
        w = self.workload()
        return Deployment(w.backbone, w.surrogate, w.img_size, w.epochs, w.iters_per_task,
                          self.profile.budgets.batch_size,
                          "direct" if same_model(proxy.backbone.name, w.backbone) else "proxy", w)

    def deploy_precision(self) -> str | None:
        """The precision a config at fp32 is deployed (and priced) at: the device's dtype, unless the
        export target's runtime cannot train at it (``precisions``): then None, the config's own."""
        from rep_tune.cost.deploy import deploy_precision
        p = deploy_precision(self.profile)
        return p if self.precisions is None or p in self.precisions else None

    def deployed_config(self, proxy: RepConfig) -> RepConfig:
        """``proxy``'s knobs as deployed: the deployment's backbone, surrogate, training schedule and
        precision (``cost.deploy.map_to_deployment``; :meth:`deploy_precision`).

        Raises ``rep_tune.cost.deploy.MappingError`` when the knobs cannot map 1:1.
        """
        from rep_tune.cost.deploy import map_to_deployment
        return map_to_deployment(proxy, self.workload(), None, self.profile.budgets.batch_size,
                                 self.deploy_precision())

    def check(self, proxy: RepConfig) -> None:
        """Raise ``MappingError`` (a ValueError) when ``proxy`` cannot be priced on the deployment."""
        self.deployed_config(proxy)

    # ---- costs ---------------------------------------------------------------------------
    def predict(self, config: RepConfig, num_classes: int | None = None) -> Cost:
        """Predicted cost per training iteration on the deployment at its schedule (schedule mean)."""
        from rep_tune.cost.deploy import predict_deployed
        return predict_deployed(config, self._deploy_profile(), keep_precision=self.deploy_precision() is None)

    def trial_cost(self, predicted: Cost, measured: Cost | None) -> Cost:
        """The cost a trained trial is judged by on this target: the prediction on the deployment."""
        return predicted

    def baseline_cost(self, predicted: Cost, train) -> Cost:
        """The baseline's cost that relative budgets scale (``train()`` measures it, when that is how)."""
        return predicted

    def where(self, *, long: bool = False) -> str:
        """Where its costs are figured: the deployed backbone (``long``: with batch and schedule)."""
        w = self.workload()
        if long:
            return f"{w.backbone}@{w.img_size}, batch {self.profile.budgets.batch_size}, mean over the deployment's schedule"
        return f"{w.backbone}@{w.img_size}"

    def describe_costs(self) -> str:
        w = self.workload()
        return (f"{self.key}: predicted by the cost model on the deployment `{w.backbone}`@{w.img_size}, "
                f"{w.epochs} epoch(s) of {w.iters_per_task or 'all'} iterations per task")


@dataclass
class LocalTarget(Target):
    """This machine (``--device local``, or a profile written by ``rep-tune profile`` on this host):
    the proxy runs here, so the deployment *is* the proxy (direct accuracy) and its cost is
    *measured* during training; pre-screening, before training, uses the cost model's prediction
    at the search's schedule and this profile's budget batch size."""

    kind = "local"
    cost_source = "measured"

    def deployment(self, proxy: RepConfig) -> Deployment:
        w = self.workload()
        return Deployment(proxy.backbone.name, proxy.selection.surrogate, proxy.backbone.img_size,
                          self.deploy_epochs or w.epochs, self.deploy_iters_per_task or w.iters_per_task,
                          proxy.training.batch_size, "direct", None)

    def deployed_config(self, proxy: RepConfig) -> RepConfig:
        d = self.deployment(proxy)
        return proxy.replace(**{"training.epochs": d.epochs, "training.iters_per_task": d.iters_per_task})

    def check(self, proxy: RepConfig) -> None:
        """Every proxy runs here as it is."""

    def predict(self, config: RepConfig, num_classes: int | None = None) -> Cost:
        from rep_tune.cost import predict
        kwargs = {"num_classes": num_classes} if num_classes else {}
        return predict(config, self.profile, iters_per_task=config.training.iters_per_task,
                       batch=self.profile.budgets.batch_size, **kwargs)

    def trial_cost(self, predicted: Cost, measured: Cost | None) -> Cost:
        """The training's own measurement, figure by figure, where it has one."""
        if measured is None:
            return predicted
        return Cost({m: measured.get(m) or predicted.get(m) for m in METRICS})

    def baseline_cost(self, predicted: Cost, train) -> Cost:
        return train() or predicted

    def where(self, *, long: bool = False) -> str:
        return "this machine, the proxy at the search's schedule" if long else "this machine"

    def describe_costs(self) -> str:
        return f"{self.key}: measured on this machine (the proxy at the search's schedule)"


def ald_horizon(targets: list[Target], proxy: RepConfig) -> int | None:
    """The iterations per task the proxy's ALD schedule is laid over (``ald.horizon``): the first
    non-local target's deployed task length, so the proxy drops blocks as that deployment does.
    None when every target is local (the proxy is the deployment)."""
    lengths = [t.deployment(proxy).iterations_per_task for t in targets]   # None for a local target
    return next((n for n in lengths if n), None)


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "device"


def is_this_machine(profile: DeviceProfile) -> bool:
    host = (profile.identity or {}).get("host")
    return bool(host) and str(host) == socket.gethostname()


def local_profile(batch_size: int = 16) -> DeviceProfile:
    """A profile of this machine: ``rep_tune.profiler.profile_device(quick=True)``."""
    from rep_tune.profiler import profile_device
    prof = profile_device(quick=True)
    prof.identity = {**(prof.identity or {}), "host": socket.gethostname()}
    prof.budgets.batch_size = batch_size
    return prof


def load_targets(devices: list[str], batch_size: int = 16, *, deploy_backbone: str | None = None,
                 deploy_epochs: int | None = None, deploy_iters_per_task: int | None = None,
                 export_target: str | None = None) -> list[Target]:
    """Profiles from files, folders (every ``*.yaml`` in them), shipped names, or ``local``.

    ``export_target``: the deployment trains at a precision that export format's runtime can run
    (``rep_tune.export.capabilities``; the reference REP runtime trains fp32 only, even on an fp16 device)."""
    out: list[Target] = []
    precisions = None
    if export_target:
        from rep_tune.export import capabilities
        precisions = capabilities(export_target).precisions
    extra = dict(deploy_backbone=deploy_backbone, deploy_epochs=deploy_epochs, deploy_iters_per_task=deploy_iters_per_task,
                 precisions=precisions)
    for spec in devices or []:
        if spec == "local":
            out.append(LocalTarget(local_profile(batch_size), "local", None, **extra))
            continue
        p = Path(spec)
        paths = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        if p.is_dir() and not paths:
            raise FileNotFoundError(f"{spec}: folder has no *.yaml device profiles")
        for path in paths:
            # an existing path is the user's; a missing shipped name or profiles/<shipped>.yaml is shipped
            if not path.exists() and shipped_file(path, PROFILES) is None:
                names = ", ".join(s.stem for s in shipped_profiles())
                raise FileNotFoundError(f"{spec}: no such device profile (shipped: {names or 'none'}; or 'local')")
            prof = DeviceProfile.load(path)
            kind = LocalTarget if is_this_machine(prof) else Target
            out.append(kind(prof, slug(prof.name), str(path), **extra))
    keys = [t.key for t in out]
    dup = {k for k in keys if keys.count(k) > 1}
    if dup:
        raise ValueError(f"--device: two profiles share the name {sorted(dup)[0]!r}; rename one (field 'name')")
    if not out:
        raise ValueError("--device: expected at least one device profile (file, folder, shipped name or 'local')")
    if deploy_backbone:
        from rep_tune.archs import arch_of
        try:
            arch_of(deploy_backbone)
        except KeyError as e:
            raise ValueError(f"--deploy-backbone: {e.args[0]}") from None
    return out
