"""Backbone loading: local checkpoints, missing files, architecture checks, sharing."""
from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from rep_tune.runtime import backbone
from rep_tune.runtime.backbone import HubUnavailable, check_arch, embedded_weights, load_backbone

PICO = "vit_pico_patch4_32"




def _written_state(seed: int) -> dict[str, torch.Tensor]:
    """A pico state dict unlike the default random init (so loading it is observable)."""
    torch.manual_seed(seed)
    model = timm.create_model(PICO, pretrained=False, num_classes=10)
    return {k: (v + 0.5).contiguous() for k, v in model.state_dict().items()}


def _assert_loaded(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    loaded = model.state_dict()
    body = [k for k in state if not k.startswith("head.")]
    assert body and all(torch.equal(loaded[k], state[k]) for k in body)


def test_loads_safetensors_checkpoint(tmp_path):
    state = _written_state(1)
    path = tmp_path / "pico.safetensors"
    save_file(state, str(path))
    model = load_backbone(PICO, pretrained=False, checkpoint=path)
    _assert_loaded(model, state)
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_loads_pth_checkpoint_plain_and_wrapped(tmp_path):
    state = _written_state(2)
    plain, wrapped = tmp_path / "plain.pth", tmp_path / "wrapped.pt"
    torch.save(state, plain)
    torch.save({"model": state}, wrapped)
    _assert_loaded(load_backbone(PICO, pretrained=False, checkpoint=plain), state)
    _assert_loaded(load_backbone(PICO, pretrained=False, checkpoint=wrapped), state)


def test_loaded_once_per_process():
    a = load_backbone(PICO, pretrained=False)
    b = load_backbone(PICO, pretrained=False)
    assert a is b
    assert load_backbone(PICO, pretrained=False, img_size=16) is not a


def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(FileNotFoundError, match="nowhere/weights.safetensors"):
        load_backbone(PICO, pretrained=False, checkpoint=missing)


def test_checkpoint_of_another_architecture_raises(tmp_path):
    path = tmp_path / "pico.safetensors"
    save_file(_written_state(3), str(path))
    with pytest.raises(ValueError, match="does not match"):
        load_backbone("vit_micro_patch4_32", pretrained=False, checkpoint=path)


def test_arch_check_against_arch_of():
    pico = load_backbone(PICO, pretrained=False)
    check_arch(pico, PICO)   # agrees: no error
    with pytest.raises(ValueError, match="embed_dim: expected 96, found 64"):
        check_arch(pico, "vit_micro_patch4_32")


@pytest.mark.parametrize("name", ["vit_micro_patch2_28.fmnist", "vit_pico_patch2_28.fmnist"])
def test_shipped_embedded_weights_load_with_the_196_patch_layout(name):
    from safetensors.torch import load_file
    path = embedded_weights(name)
    model = load_backbone(name, pretrained=True)
    _assert_loaded(model, load_file(str(path)))
    assert model.patch_embed.num_patches == 196 and model.num_prefix_tokens == 1     # ViT/16@224's layout


def test_retired_embedded_weights_give_a_clear_error():
    name = "vit_pico_patch4_32.fmnist"           # 64-patch test architecture: random init only
    with pytest.raises(FileNotFoundError, match="pretrained=False"):
        load_backbone(name, pretrained=True)


# ---- hub failures: the model, "offline", and the way out; no retry loop ----------------------
@pytest.fixture
def empty_hub_cache(monkeypatch, tmp_path):
    """An empty Hugging Face cache, no proxy, no remembered network probe."""
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(backbone, "_PROBED", {})
    return constants


def _endpoint(monkeypatch, constants, url: str) -> None:
    """Point huggingface_hub's downloads at ``url`` (HF_ENDPOINT, as read at its import)."""
    monkeypatch.setattr(constants, "ENDPOINT", url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")


def test_hub_offline_names_the_model_and_the_fix(empty_hub_cache, monkeypatch):
    from huggingface_hub.errors import LocalEntryNotFoundError
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", True)
    with pytest.raises(HubUnavailable) as e:
        load_backbone("vit_tiny_patch16_224", pretrained=True, section="selection")
    msg = str(e.value)
    assert "'vit_tiny_patch16_224'" in msg and "hub is offline (HF_HUB_OFFLINE is set)" in msg
    assert "selection.pretrained: false" in msg and "selection.checkpoint: <local weights file>" in msg
    assert isinstance(e.value, ValueError) and "\n" not in msg
    assert isinstance(e.value.__cause__, LocalEntryNotFoundError)   # answered from the cache: no request


def test_offline_loads_cached_hub_weights(empty_hub_cache, monkeypatch):
    """Offline is not an error when the weights are in the Hugging Face cache (here: written by the test)."""
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", True)
    repo = Path(empty_hub_cache.HF_HUB_CACHE) / "models--timm--test_vit.r160_in1k"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    torch.manual_seed(4)
    state = {k: (v + 0.25).contiguous() for k, v in timm.create_model("test_vit", num_classes=0).state_dict().items()}
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))
    _assert_loaded(load_backbone("test_vit.r160_in1k", pretrained=True), state)


def test_no_network_is_detected_before_any_download(empty_hub_cache, monkeypatch):
    """A closed local port stands for a machine without network (also on CI machines that have one)."""
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", False)
    _endpoint(monkeypatch, empty_hub_cache, "http://127.0.0.1:9")
    with pytest.raises(HubUnavailable) as e:
        load_backbone("deit_tiny_patch16_224.fb_in1k", pretrained=True)
    msg = str(e.value)
    assert "'deit_tiny_patch16_224.fb_in1k'" in msg and "hub is offline (127.0.0.1:9 is unreachable" in msg
    assert "pretrained: false" in msg and "checkpoint: <local weights file>" in msg and "selection:" in msg
    assert empty_hub_cache.HF_HUB_OFFLINE is False                    # cache-only mode was undone
    assert backbone._PROBED == {("127.0.0.1", 9): backbone.hub_offline_reason()}   # probed once


def test_failed_download_names_the_model(empty_hub_cache, monkeypatch):
    """A hub that answers 404 (a local HTTP server): the error still names the model and the way out."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):
            self.send_response(404)
            self.end_headers()

        do_GET = do_HEAD

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", False)
        _endpoint(monkeypatch, empty_hub_cache, f"http://127.0.0.1:{server.server_port}")
        with pytest.raises(HubUnavailable, match=r"pretrained weights of 'vit_tiny_patch16_224' could not be "
                                                 r"downloaded .*; set backbone.pretrained: false"):
            load_backbone("vit_tiny_patch16_224", pretrained=True, section="backbone")
    finally:
        server.shutdown()


def test_cli_prints_the_hub_failure_without_traceback(empty_hub_cache, monkeypatch, capsys):
    """The paper preset's surrogate (vit_tiny_patch16_224) while backbone.pretrained=false."""
    from rep_tune.cli import main
    monkeypatch.setattr(empty_hub_cache, "HF_HUB_OFFLINE", True)
    rc = main(["train", "--backbone", "deit_tiny_patch16_224", "--set", "backbone.pretrained=false",
               "--set", "backbone.img_size=32", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "'vit_tiny_patch16_224'" in err and "offline" in err and "pretrained: false" in err
