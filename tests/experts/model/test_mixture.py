"""Mixture-of-experts model.json (experts/model/mixture.py and its checks in
experts/model/model.py): the shipped geometries, and every malformed mixture or missing
expert weight refused with a message naming the part."""

from __future__ import annotations

import pytest

from experts.layers import SpecError
from experts.model.architectures import alexnet_moe, fashion_moe, random_weights
from experts.model.mixture import mixture_params, mixture_spec
from experts.model.model import ModelError, validate
from tests.helpers import SMALL


@pytest.mark.parametrize("arch", [fashion_moe, alexnet_moe])
def test_shipped_geometries_check(arch):
    meta = arch()
    spec = mixture_spec(meta)
    assert spec.k == 1
    params = mixture_params(meta)
    assert sum(key.startswith("experts.") for key in params) == spec.experts * sum(
        key.startswith("experts.0.") for key in params
    )


def test_alexnet_moe_is_tschopps_geometry():
    spec = mixture_spec(alexnet_moe())
    assert spec.experts == 16 and spec.stem[0].out_channels == 48
    widths = [
        getattr(layer, "out_channels", getattr(layer, "out_features", None))
        for layer in spec.expert
        if layer.weighted
    ]
    assert widths == [64, 96, 96, 64, 1024, 2048]
    assert spec.num_classes == 1000


@pytest.mark.parametrize(
    "change,needle",
    [
        (lambda m: m.update(experts=0), "experts must be a positive integer"),
        (lambda m: m.update(k=6), "between 1 and 5"),
        (lambda m: m.update(k=0), "between 1 and 5"),
        (lambda m: m["gate"][-1].update(out_features=4), "gate: must end in 5 logits"),
        (lambda m: m.update(expert=m["expert"][:1]), "expert: must end in a flat feature vector"),
        (lambda m: m["head"][0].update(op="conv"), "head"),
        (lambda m: m.pop("stem"), "missing 'stem'"),
    ],
)
def test_bad_mixtures_name_the_part(change, needle):
    import copy

    meta = copy.deepcopy(SMALL)
    change(meta)
    with pytest.raises((SpecError, ModelError, KeyError), match=needle):
        validate(meta, random_weights(SMALL, seed=0), "model 'small-moe'")


def test_missing_expert_weights_named():
    weights = random_weights(SMALL, seed=0)
    del weights["experts.3.c2.weight"]
    with pytest.raises(ModelError, match=r"experts\.3\.c2\.weight"):
        validate(SMALL, weights, "model 'small-moe'")
