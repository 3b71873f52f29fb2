"""Gain rules as objects, parsed from names only at the edges."""

from __future__ import annotations

import pytest
import torch

from bioattn.attention.rules import (
    CombinedGain,
    FeatureGain,
    ResponseGain,
    SpatialGain,
    ValueSource,
    parse_rule,
    parse_rules,
)
from bioattn.errors import ConfigError

NAMES = [
    "tuning",
    "gradient",
    "uniform",
    "shuffled-tuning",
    "gradient-positive",
    "response-shuffled-gradient-positive",
    "spatial",
    "spatial-additive",
    "spatial+tuning",
    "spatial+shuffled-tuning-additive",
]


@pytest.mark.parametrize("name", NAMES)
def test_every_name_round_trips(name):
    assert parse_rule(name).name == name
    assert parse_rule(parse_rule(name)) == parse_rule(name)


def test_parsed_rules_carry_their_parts():
    assert parse_rule("response-shuffled-gradient-positive") == ResponseGain("gradient", True, True)
    assert parse_rule("spatial") == SpatialGain(additive=False)
    both = parse_rule("spatial+shuffled-tuning-additive")
    assert both == CombinedGain(FeatureGain("tuning", shuffled=True), additive=True)
    assert (both.kind, both.shuffled, both.spatial) == ("tuning", True, True)
    assert parse_rule("spatial-additive").additive


def test_bad_names_say_what_is_valid():
    with pytest.raises(ConfigError, match=r"unknown method 'tunning'.*valid: tuning"):
        parse_rule("tunning")
    for bad in ("spatial+response-tuning", "spatial+", "spatial-tuning", "spatially"):
        with pytest.raises(ConfigError, match="spatial"):
            parse_rule(bad)
    with pytest.raises(ConfigError, match="uniform gain cannot be shuffled"):
        parse_rule("shuffled-uniform")
    with pytest.raises(ConfigError, match="no methods"):
        parse_rules("")


def test_duplicate_rules_are_merged():
    expected = [FeatureGain("tuning"), FeatureGain("gradient")]
    assert parse_rules("tuning, gradient,tuning") == expected


def test_rules_build_the_documented_modulations(tiny_network, values):
    layer = tiny_network.layers[0]
    source = ValueSource(values)
    v = source.vector("tuning", "merged", "a", layer)
    gain = parse_rule("tuning").modulation(source, "merged", "a", layer, 0.5)
    torch.testing.assert_close(gain.scale, torch.clamp(1 + 0.5 * v, min=0))
    positive = parse_rule("tuning-positive").modulation(source, "merged", "a", layer, 0.5)
    torch.testing.assert_close(positive.scale, 1 + 0.5 * torch.clamp(v, min=0))
    uniform = parse_rule("uniform").modulation(source, "merged", "a", layer, 0.5)
    torch.testing.assert_close(uniform.scale, torch.full((layer.channels,), 1.5))
    shuffled = parse_rule("shuffled-tuning").vector(source, "merged", "a", layer)
    assert sorted(shuffled.tolist()) == pytest.approx(sorted(v.tolist()))
    with pytest.raises(ConfigError, match="cued quadrant"):
        parse_rule("spatial").modulation(source, "merged", "a", layer, 0.5)
    cue = parse_rule("spatial+tuning").modulation(source, "merged", "a", layer, 0.5, quadrant=2)
    assert cue.spatial.quadrant == 2 and cue.scale is not None
