"""Backbone loading: local checkpoints, missing files, architecture checks, sharing."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from rep_tune.runtime.backbone import check_arch, embedded_weights, load_backbone

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


def test_embedded_pretrained_weights_or_a_clear_error():
    name = "vit_pico_patch4_32.fmnist"
    path = embedded_weights(name)
    if not path.is_file():   # weights not committed yet: the error says where they are expected
        with pytest.raises(FileNotFoundError, match=str(path)):
            load_backbone(name, pretrained=True)
    else:
        from safetensors.torch import load_file
        _assert_loaded(load_backbone(name, pretrained=True), load_file(str(path)))
