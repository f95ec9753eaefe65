"""Selection: projection determinism, the per-sample query cache, the baseline query."""
from __future__ import annotations

import pytest
import torch

from rep_tune.config import preset
from rep_tune.runtime.model import RepModel
from rep_tune.runtime.selection import QueryCache, projection

OFFLINE = {"backbone.pretrained": False, "selection.pretrained": False}




def _x(seed: int, b: int = 4) -> torch.Tensor:
    return torch.randn(b, 3, 28, 28, generator=torch.Generator().manual_seed(seed))


def test_projection_fixed_by_seed():
    a, b, c = projection(64, 96, 5), projection(64, 96, 5), projection(64, 96, 6)
    assert a.shape == (64, 96) and torch.equal(a, b) and not torch.allclose(a, c)


def test_surrogate_query_is_projected_features():
    model = RepModel(preset("paper", "l2p", **OFFLINE, **{"selection.projection_seed": 9}), 10).eval()
    x = _x(0)
    feats = model.surrogate_features(x)
    assert feats.shape == (4, 64)          # pico surrogate width
    assert torch.equal(model.projection, projection(64, 96, 9))
    assert torch.allclose(model.query(x), feats @ projection(64, 96, 9))
    assert torch.allclose(feats, model.surrogate.forward_features(x)[:, 0])


def test_cached_query_equals_recomputed_and_is_computed_once():
    cache = QueryCache()
    l2p = RepModel(preset("paper", "l2p", **OFFLINE), 10).eval()
    x = _x(1)
    fresh = l2p.query(x)
    first = l2p.query(x, ids=[10, 11, 12, 13], dataset_key="train", cache=cache)
    assert (cache.misses, cache.hits) == (4, 0) and torch.allclose(first, fresh, atol=1e-6)
    # a config sharing the surrogate reuses the rows; a partly new batch computes only the new ones
    dual = RepModel(preset("paper", "dualprompt", **OFFLINE), 10).eval()
    x2 = torch.cat([x[2:], _x(2, 2)])
    second = dual.query(x2, ids=torch.tensor([12, 13, 20, 21]), dataset_key="train", cache=cache)
    assert (cache.misses, cache.hits) == (6, 2) and len(cache) == 6
    assert torch.allclose(second, dual.query(x2), atol=1e-6)
    assert torch.equal(second[:2], first[2:])
    # another dataset key is another table
    l2p.query(x, ids=[10, 11, 12, 13], dataset_key="test", cache=cache)
    assert cache.misses == 10


def test_cache_needs_ids_and_dataset_key():
    model = RepModel(preset("paper", "l2p", **OFFLINE), 10)
    with pytest.raises(ValueError, match="sample ids"):
        model.query(_x(0), cache=QueryCache())


def test_baseline_query_is_the_backbone_cls():
    model = RepModel(preset("baseline", "l2p", **OFFLINE, **{"selection.query_model": "shared"}), 10).eval()
    x = _x(3)
    assert model.surrogate is None and model.projection is None
    q = model.query(x)
    assert q.shape == (4, 96)
    assert torch.allclose(q, model.backbone.forward_features(x)[:, 0])
