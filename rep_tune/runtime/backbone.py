"""Backbones: timm ViTs by name, local checkpoints, and the embedded offline ViTs.

The embedded backbones are ordinary timm ``VisionTransformer`` models registered under
timm-style names, so ``timm.create_model("vit_micro_patch2_28.fmnist", pretrained=True)``
loads the committed Fashion-MNIST weights without a network. The update backbone has 12 blocks
and ViT/16@224's token layout (14x14 = 196 patches + CLS), so every AToM/ALD schedule of the
paper applies unchanged and a config found on it maps knob for knob onto ``vit_*_patch16_224``.

The 64-patch ``vit_micro_patch4_32`` / ``vit_pico_patch4_32`` remain registered as small,
fast test architectures (random init only: their weights were retired with the 196-patch
default, so ``pretrained=True`` on them says the weights are not available).
"""
from __future__ import annotations

from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Iterator

import timm
import torch
from timm.models import register_model
from timm.models._builder import build_model_with_cfg
from timm.models._registry import generate_default_cfgs
from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

EMBEDDED = {
    # test-sized (random init only): 12 blocks, width 96, 32 px, patch 4 -> 64 patches + CLS
    "vit_micro_patch4_32": dict(img_size=32, patch_size=4, embed_dim=96, depth=12, num_heads=3),
    # test-sized surrogate (random init only): 6 blocks, width 64
    "vit_pico_patch4_32": dict(img_size=32, patch_size=4, embed_dim=64, depth=6, num_heads=2),
    # update backbone with ViT/16@224's token layout: 12 blocks, 28 px, patch 2 -> 14x14 = 196 patches + CLS
    "vit_micro_patch2_28": dict(img_size=28, patch_size=2, embed_dim=96, depth=12, num_heads=3),
    # selection surrogate: 6 blocks, width 64, same 196-patch grid
    "vit_pico_patch2_28": dict(img_size=28, patch_size=2, embed_dim=64, depth=6, num_heads=2),
}


def _cfg(name: str) -> dict:
    return {
        "file": str(WEIGHTS_DIR / f"{name}.fmnist.safetensors"),
        "num_classes": 10,
        "input_size": (3, EMBEDDED[name]["img_size"], EMBEDDED[name]["img_size"]),
        "mean": (0.5, 0.5, 0.5),
        "std": (0.5, 0.5, 0.5),
        "crop_pct": 1.0,
        "interpolation": "bilinear",
        "first_conv": "patch_embed.proj",
        "classifier": "head",
        "license": "mit",
        "tag": "fmnist",
    }


default_cfgs = generate_default_cfgs({f"{n}.fmnist": _cfg(n) for n in EMBEDDED})


def _create(name: str, pretrained: bool, **kwargs) -> VisionTransformer:
    args = dict(EMBEDDED[name], **kwargs)
    return build_model_with_cfg(
        VisionTransformer, name, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **args
    )


@register_model
def vit_micro_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Test-sized 64-patch ViT (1.35M parameters, random init only)."""
    return _create("vit_micro_patch4_32", pretrained, **kwargs)


@register_model
def vit_pico_patch4_32(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Test-sized 64-patch surrogate (0.3M parameters, random init only)."""
    return _create("vit_pico_patch4_32", pretrained, **kwargs)


@register_model
def vit_micro_patch2_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Embedded update backbone with ViT/16@224's 196-patch layout, pre-trained on Fashion-MNIST."""
    return _create("vit_micro_patch2_28", pretrained, **kwargs)


@register_model
def vit_pico_patch2_28(pretrained: bool = False, **kwargs) -> VisionTransformer:
    """Embedded selection surrogate (6 blocks, width 64, 196 patches), pre-trained on Fashion-MNIST."""
    return _create("vit_pico_patch2_28", pretrained, **kwargs)


# ---- loading: once per process, frozen ----------------------------------------------------

_LOADED: dict[tuple, VisionTransformer] = {}


def embedded_weights(name: str) -> Path | None:
    """Committed weights file of an embedded backbone name (``vit_micro_patch2_28.fmnist``), else None."""
    base = name.split(".")[0]
    return WEIGHTS_DIR / f"{base}.fmnist.safetensors" if base in EMBEDDED else None


def load_backbone(name: str, *, pretrained: bool, checkpoint: str | Path | None = None,
                  img_size: int | None = None, section: str | None = None) -> VisionTransformer:
    """The frozen (eval, no grad) timm ViT ``name``, built once per process and shared.

    Weights: ``checkpoint`` (a local .safetensors/.pth/.pt state dict) wins; else ``pretrained``
    (hub weights, or the committed file for the embedded models); else a seeded random init.
    Every caller with the same arguments gets the same module: it is frozen, so sharing it
    costs nothing and saves loading (and memory) per trial.
    ``section`` names the config section the model comes from (``backbone``, ``selection``) so a
    failed download can say which ``pretrained``/``checkpoint`` field to set.
    Raises UnsupportedArch (a ValueError) for a model rep-tune cannot drive, HubUnavailable (a
    ValueError) when hub weights cannot be had.
    """
    ckpt = Path(checkpoint).expanduser().resolve() if checkpoint else None
    if ckpt is not None and not ckpt.is_file():
        raise FileNotFoundError(f"backbone checkpoint for {name!r} not found: {ckpt}")
    stamp = (ckpt.stat().st_mtime_ns, ckpt.stat().st_size) if ckpt else None
    key = (name, bool(pretrained) if ckpt is None else None, str(ckpt) if ckpt else None, stamp, img_size)
    model = _LOADED.get(key)
    if model is None:
        model = _build(name, pretrained=pretrained, checkpoint=ckpt, img_size=img_size, section=section)
        model.requires_grad_(False)
        model.eval()
        _LOADED[key] = model
    return model


def clear_backbone_cache() -> None:
    """Forget the loaded backbones (tests; freeing memory between unrelated studies)."""
    _LOADED.clear()


def _build(name: str, *, pretrained: bool, checkpoint: Path | None, img_size: int | None,
           section: str | None = None) -> VisionTransformer:
    from rep_tune.archs import arch_of
    arch_of(name)           # refuse a model rep-tune cannot drive before building (or downloading) it
    kwargs = dict(num_classes=0)
    if img_size is not None:
        kwargs["img_size"] = img_size
    local = checkpoint
    if local is None and pretrained:
        local = embedded_weights(name)
        if local is not None and not local.is_file():
            raise FileNotFoundError(f"no embedded weights ship for {name!r} (expected at {local}) "
                                    f"(use pretrained=False, or give a checkpoint)")
    if local is None and pretrained:
        model = from_hub(name, section=section, **kwargs)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)                                        # random init is reproducible
            model = timm.create_model(name, pretrained=False, **kwargs)
        if local is not None:
            _load_local(model, local, name)
    check_arch(model, name, img_size)
    return model


# ---- hub weights: fail fast and say what to do -------------------------------------------------

HUB_PROBE_TIMEOUT_S = 3.0


class HubUnavailable(ValueError):
    """Pretrained weights of a named model could not be fetched (offline, or the download failed)."""


def hub_offline_reason() -> str | None:
    """Why the Hugging Face hub cannot be reached now, or None when it answers.

    ``HF_HUB_OFFLINE`` (huggingface_hub's offline mode) wins; otherwise one TCP connection to the
    hub endpoint (or the HTTPS proxy) is tried, bounded by HUB_PROBE_TIMEOUT_S including DNS, so a
    machine without network learns it in seconds instead of huggingface_hub's retry loop.
    """
    from huggingface_hub import constants
    if constants.is_offline_mode():
        return "HF_HUB_OFFLINE is set"
    host, port = _hub_address(constants.HUGGINGFACE_CO_URL_TEMPLATE)   # where file downloads go
    return _probe(host, port, HUB_PROBE_TIMEOUT_S)


def _hub_address(url: str) -> tuple[str, int]:
    """(host, port) a request to ``url`` connects to first: the proxy when one is set, else the URL's host."""
    import urllib.request
    from urllib.parse import urlsplit
    proxies = urllib.request.getproxies()
    target = urlsplit(url)
    proxy = proxies.get(target.scheme) or proxies.get("all")
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (443 if target.scheme == "https" else 80)
    return target.hostname or "", port


_PROBED: dict[tuple[str, int], str | None] = {}


def _probe(host: str, port: int, timeout: float) -> str | None:
    """None when a TCP connection to host:port opens within ``timeout`` s (DNS included), else why not.
    Remembered per process: one probe, however many models are loaded."""
    import socket
    import threading
    if (host, port) in _PROBED:
        return _PROBED[(host, port)]
    result: list[str | None] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"{host}:{port} is unreachable: {e.strerror or e}")

    t = threading.Thread(target=connect, daemon=True)   # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout)
    why = result[0] if result else f"{host}:{port} did not answer within {timeout:g} s"
    _PROBED[(host, port)] = why
    return why


def _hub_error(e: BaseException) -> bool:
    """An error of fetching weights (network, HTTP, missing cache entry), not of building the model."""
    module = type(e).__module__.split(".")[0]
    return isinstance(e, OSError) or module in ("huggingface_hub", "httpx", "requests", "urllib3", "urllib")


def from_hub(name: str, *, section: str | None = None, **kwargs) -> VisionTransformer:
    """timm model ``name`` with its hub weights; from the local cache only when the hub is offline.

    Raises HubUnavailable naming the model, saying whether the hub is offline, and what to set
    instead (``pretrained: false`` for a random init, or ``checkpoint:`` for a local file).
    """
    offline = hub_offline_reason()
    try:
        with (_cache_only() if offline else nullcontext()):
            return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:
        if not _hub_error(e):
            raise
        where = f"{section}." if section else ""
        fix = (f"set {where}pretrained: false (random init) or {where}checkpoint: <local weights file>"
               + ("" if section else " in its config section (backbone: or selection:)"))
        if offline:
            raise HubUnavailable(f"pretrained weights of {name!r} are not in the local cache and the Hugging Face "
                                 f"hub is offline ({offline}); {fix}") from e
        raise HubUnavailable(f"pretrained weights of {name!r} could not be downloaded from the Hugging Face hub "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); {fix}") from e


@contextmanager
def _cache_only() -> Iterator[None]:
    """huggingface_hub's offline mode (HF_HUB_OFFLINE) for the duration of a block: files come from
    the local cache, no request is made (so no retry loop)."""
    from huggingface_hub import constants
    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _load_local(model: VisionTransformer, path: Path, name: str) -> None:
    """Load a local state dict strictly (the validating reader, timm's ViT filter); the classifier is dropped.

    ``read_checkpoint`` never unpickles code (safetensors, or torch.load with weights_only) and names
    the file when it is corrupt.
    """
    from rep_tune.checkpoints import read_checkpoint
    state = read_checkpoint(path, use_ema=True)
    try:
        state = checkpoint_filter_fn(state, model)
    except Exception as e:  # a foreign layout the filter cannot adapt
        raise ValueError(f"checkpoint {path} does not fit {name!r}: {e}") from e
    state = {k: v for k, v in state.items() if not k.startswith("head.")}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ValueError(f"checkpoint {path} does not match the architecture of {name!r}: {e}") from e
    missing = [k for k in result.missing_keys if not k.startswith("head.")]
    if missing or result.unexpected_keys:
        raise ValueError(f"checkpoint {path} does not match {name!r}: missing keys {missing[:5]}"
                         f"{'...' if len(missing) > 5 else ''}, unexpected keys {result.unexpected_keys[:5]}")


# Fields of ArchSpec a built model must agree on with arch_of (parameter counts may drift
# with timm versions without changing what the runtime does).
CHECKED = ("depth", "embed_dim", "num_heads", "patch_size", "img_size", "in_chans", "class_token",
           "dist_token", "reg_tokens", "mlp_hidden", "mlp_kind", "layer_scale")


def check_arch(model: VisionTransformer, name: str, img_size: int | None = None) -> None:
    """Raise ValueError unless rep-tune can drive ``model`` and it has the shape ``arch_of(name)`` says.

    The block contract (``rep_tune.arch_probe.reason_against``) is applied to the built model
    itself; the cost model counts with ``arch_of``, so a model that disagrees would be priced wrongly.
    """
    import dataclasses
    from rep_tune.arch_probe import spec_from_model
    from rep_tune.archs import arch_of, base_name
    arch = arch_of(name)
    if img_size:
        arch = dataclasses.replace(arch, img_size=img_size)
    found = spec_from_model(model, base_name(name))
    wrong = {k: (getattr(arch, k), getattr(found, k)) for k in CHECKED if getattr(arch, k) != getattr(found, k)}
    if wrong:
        detail = ", ".join(f"{k}: expected {e}, found {f}" for k, (e, f) in wrong.items())
        raise ValueError(f"backbone {name!r} does not match rep_tune.archs.arch_of: {detail} (after a timm "
                         f"upgrade, regenerate rep_tune/timm_archs.json with scripts/make_arch_table.py)")


def backbone_normalization(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std the backbone ``name`` expects, from timm's pretrained_cfg of that name (tag included).

    Every model says its own: the embedded ViTs' cfg says 0.5/0.5, a CLIP tag OpenAI's CLIP
    statistics, an untagged name its default tag's. A name timm has no pretrained_cfg for gets
    timm's own default (ImageNet mean/std, as ``timm.data.resolve_data_config``).
    """
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
    from timm.models import get_pretrained_cfg
    try:
        cfg = get_pretrained_cfg(name, allow_unregistered=True)
    except RuntimeError as e:                      # a tag timm does not know for this architecture
        raise ValueError(f"backbone {name!r}: {e}") from None
    mean = getattr(cfg, "mean", None) or IMAGENET_DEFAULT_MEAN
    std = getattr(cfg, "std", None) or IMAGENET_DEFAULT_STD
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)
