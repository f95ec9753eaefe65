"""RepConfig: presets, YAML/JSON round-trip, and the promised validation errors."""
from __future__ import annotations

import pytest
import yaml

from rep_tune.config import RepConfig, preset
from rep_tune.schema import SchemaError
from rep_tune.schedule import effective_merges, keep_probability, mean_keep_probabilities, ramp, tokens_per_block


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip(tmp_path, suffix):
    cfg = preset("paper", "dualprompt").replace(**{"training.lr": 0.01, "atom.merge": [0, 1] * 6})
    path = cfg.save(tmp_path / f"c{suffix}")
    assert RepConfig.load(path) == cfg


def test_paper_preset_is_the_published_ramp():
    cfg = preset("paper", "l2p")
    # ToMe parse_r((8, 1.0)) on 12 blocks: 0 .. 2r
    assert cfg.merge_schedule == [0, 1, 2, 4, 5, 7, 8, 10, 11, 13, 14, 16]
    assert (cfg.ald.theta_min, cfg.ald.gamma, cfg.ald.tau, cfg.ald.alpha) == (0.5, 0.001, 16, 0.9)
    assert preset("paper", "dualprompt").ald.tau == 12
    base = preset("baseline")
    assert base.selection.surrogate is None and not base.atom.enabled and not base.ald.enabled
    assert base.merge_schedule == [0] * 12


def _write(tmp_path, data):
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize("change, field, expected, found", [
    (("atom", "merge", [0] * 11), "atom.merge", "a list of 12 merge counts", [0] * 11),
    (("prompt", "top_k", 11), "prompt.top_k", "int in [1, pool_size=10]", 11),
    (("ald", "theta_min", 1.5), "ald.theta_min", "number in (0, 1]", 1.5),
    (("training", "batch_size", "16"), "training.batch_size", "int", "16"),
    (("prompt", "method", "hide"), "prompt.method", "one of 'l2p', 'dualprompt', 'coda'", "hide"),
    (("backbone", "name", "resnet50"), "backbone.name", "a timm ViT rep-tune can drive", "resnet50"),
    (("prompt", "topk", 3), "prompt.topk", "one of ", "topk"),
])
def test_bad_config_errors_name_file_field_expected_found(tmp_path, change, field, expected, found):
    data = preset("paper").to_dict()
    section, key, value = change
    data[section][key] = value
    path = _write(tmp_path, data)
    with pytest.raises(SchemaError) as e:
        RepConfig.load(path)
    msg = str(e.value)
    assert e.value.field == field and e.value.found == found
    assert str(path) in msg and field in msg and expected in msg and repr(found) in msg


def test_bad_yaml_names_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("atom: [1, 2\n")
    with pytest.raises(SchemaError, match="broken.yaml"):
        RepConfig.load(p)


def test_schedule_arithmetic():
    assert ramp(8, 12, 0.0) == [8] * 12
    # 64 patches: merges capped at half of the still-unmerged tokens
    assert effective_merges([40, 40, 40], 64) == [32, 16, 8]
    assert tokens_per_block(26, 64, [40, 40, 40]) == [90, 58, 42]
    assert keep_probability(0, 20, 0.5, 0.001, 16, 0.9) == pytest.approx(0.9)
    assert keep_probability(10**6, 0, 0.5, 0.001, 16, 0.9) == pytest.approx(0.5)
    # the closed-form task average equals the explicit average
    merge, n = ramp(8, 12), 300
    explicit = [sum(keep_probability(t, m, 0.5, 0.01, 16, 0.9) for t in range(n)) / n
                for m in [sum(effective_merges(merge, 64)[:i]) for i in range(12)]]
    assert mean_keep_probabilities(n, merge, 64, 0.5, 0.01, 16, 0.9) == pytest.approx(explicit)
