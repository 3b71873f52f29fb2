"""Gain rules as objects: what attention does to one layer, for one category, at strength β.

A rule is parsed from its name only at the edges (CLI flags, TOML files) with
:func:`parse_rule`; everything inside the toolkit passes rule objects. Every rule has a
canonical ``name``, the string the result tables carry in their ``method`` column:

========================  ==============================================================
``tuning``/``gradient``   :class:`FeatureGain`: ``max(0, 1 + β·v)`` per map (bidirectional)
``…-positive``            the same with negative values set to 0 (only enhancement)
``uniform``               every map scaled by ``max(0, 1 + β)`` (v = 1): a gain control
``shuffled-…``            values permuted across the maps of the layer (seeded): control
``response-…``            :class:`ResponseGain`: additive ``β·v·B_l``, B_l the layer's mean
                          activity over the tuning images
``spatial``               :class:`SpatialGain`: ``1 + β`` inside the cued quadrant,
                          ``max(0, 1 − β)`` outside, on every map (needs a cued quadrant)
``spatial+…``             :class:`CombinedGain`: spatial and feature gain multiplied; suffix
                          ``-additive`` adds them as the original code did
                          (``g_feature + g_spatial − 1``, unclamped)
========================  ==============================================================

The values a rule reads come from a :class:`ValueSource` (a values dataset plus the seed of the
shuffled controls). With several layers attended at once (all-layers mode) each gets the rule
at strength ``β · ALL_LAYERS_FACTOR``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
import xarray as xr

from bioattn.attention.gains import Modulation, SpatialCue, feature_gain, response_gain_shift
from bioattn.attention.values import layer_scales, layer_values, variable_name
from bioattn.errors import ConfigError
from bioattn.models.network import LayerInfo

#: Strength factor of the all-layers mode: every layer attended at β/10 (Lindsay & Miller 2018).
ALL_LAYERS_FACTOR = 0.1
#: Value types a feature rule can read.
VALUE_KINDS = ("tuning", "gradient", "uniform")

__all__ = [
    "ALL_LAYERS_FACTOR",
    "VALUE_KINDS",
    "CombinedGain",
    "FeatureGain",
    "GainRule",
    "ResponseGain",
    "SpatialGain",
    "ValueSource",
    "hash_name",
    "parse_rule",
    "parse_rules",
]


def hash_name(name: str) -> int:
    """A small deterministic integer for a name (Python's hash() is salted per process)."""
    return sum((i + 1) * ord(ch) for i, ch in enumerate(name)) % 100_003


class ValueSource:
    """Per-map values for the rules: one values dataset and the seed of the shuffled controls."""

    def __init__(self, values: xr.Dataset, shuffle_seed: int = 1) -> None:
        self.values = values
        self.shuffle_seed = shuffle_seed
        self.scales = layer_scales(values) if "mean_activity" in values else {}

    def vector(
        self,
        kind: str,
        image_type: str,
        category: str,
        layer: LayerInfo,
        shuffled: bool = False,
        positive_only: bool = False,
    ) -> torch.Tensor:
        """The (C,) values of ``kind`` at one layer: ones for ``uniform``, else tuning or
        gradient values, permuted across maps when ``shuffled`` (seeded by layer and category)
        and clipped at 0 when ``positive_only``."""
        if kind == "uniform":
            return torch.ones(layer.channels)
        v = layer_values(self.values, variable_name(kind, image_type), category, layer)
        if shuffled:
            generator = torch.Generator().manual_seed(
                self.shuffle_seed * 1_000_003
                + (layer.number or hash_name(layer.name)) * 1009  # a group has number 0
                + hash_name(category)
            )
            v = v[torch.randperm(v.numel(), generator=generator)]
        if positive_only:
            v = torch.clamp(v, min=0.0)
        return v

    def scale(self, layer: LayerInfo) -> float:
        """B_l of the response-gain rule (the layer's mean activity over tuning images; for a
        group, the mean over its calls)."""
        aliases = layer.members or (layer.alias,)
        if any(alias not in self.scales for alias in aliases):
            raise ConfigError(
                "response gain needs the layers' mean activity ('mean_activity'), which these "
                "values lack; compute values with `bioattn values`"
            )
        return sum(self.scales[alias] for alias in aliases) / len(aliases)


class GainRule(ABC):
    """Base of the gain rules. Subclasses are frozen dataclasses with a canonical ``name``."""

    #: Whether the rule needs a cued quadrant (spatial attention).
    spatial: bool = False
    #: Value type read from a :class:`ValueSource` (None: none).
    kind: str | None = None
    shuffled: bool = False
    positive_only: bool = False

    @property
    @abstractmethod
    def name(self) -> str:
        """The canonical name, as result tables carry it in their ``method`` column."""

    def needed_values(self, image_type: str) -> list[str]:
        """Variables of a values dataset this rule reads on ``image_type`` images."""
        if self.kind in (None, "uniform"):
            return []
        return [variable_name(self.kind, image_type)]

    def vector(
        self, source: ValueSource, image_type: str, category: str, layer: LayerInfo
    ) -> torch.Tensor:
        """The (C,) per-map values the rule uses for ``category`` at ``layer``."""
        if self.kind is None:
            raise ConfigError(f"rule {self.name!r} uses no per-map values")
        return source.vector(
            self.kind, image_type, category, layer, self.shuffled, self.positive_only
        )

    @abstractmethod
    def modulation(
        self,
        source: ValueSource,
        image_type: str,
        category: str,
        layer: LayerInfo,
        beta: float,
        quadrant: int | None = None,
    ) -> Modulation:
        """The rule's :class:`Modulation` of ``layer`` at strength ``beta`` (``quadrant``: the
        cued quadrant of spatial rules)."""

    def __str__(self) -> str:
        return self.name


def _check_kind(kind: str, shuffled: bool, positive_only: bool) -> None:
    if kind not in VALUE_KINDS:
        raise ConfigError(f"unknown value type {kind!r}; valid: {', '.join(VALUE_KINDS)}")
    if kind == "uniform" and (shuffled or positive_only):
        raise ConfigError("uniform gain cannot be shuffled or positive-only")


@dataclass(frozen=True)
class _ValuedGain(GainRule):
    """A rule that reads per-map values of one kind, optionally shuffled or positive-only."""

    kind: str = "tuning"
    shuffled: bool = False
    positive_only: bool = False

    def __post_init__(self) -> None:
        _check_kind(self.kind, self.shuffled, self.positive_only)

    @property
    def feature_name(self) -> str:
        """``[shuffled-]kind[-positive]``."""
        return (
            ("shuffled-" if self.shuffled else "")
            + self.kind
            + ("-positive" if self.positive_only else "")
        )


@dataclass(frozen=True)
class FeatureGain(_ValuedGain):
    """Feature similarity gain ``max(0, 1 + β·v)`` per map, the same at every position."""

    @property
    def name(self) -> str:
        return self.feature_name

    def modulation(self, source, image_type, category, layer, beta, quadrant=None):
        v = self.vector(source, image_type, category, layer)
        return Modulation(scale=feature_gain(v, beta, self.positive_only))


@dataclass(frozen=True)
class ResponseGain(_ValuedGain):
    """Additive response gain ``β·v·B_l`` per map (B_l: :meth:`ValueSource.scale`)."""

    @property
    def name(self) -> str:
        return "response-" + self.feature_name

    def needed_values(self, image_type: str) -> list[str]:
        return [*super().needed_values(image_type), "mean_activity"]

    def modulation(self, source, image_type, category, layer, beta, quadrant=None):
        v = self.vector(source, image_type, category, layer)
        shift = response_gain_shift(v, beta, source.scale(layer), self.positive_only)
        return Modulation(shift=shift)


def _cue(rule: GainRule, quadrant: int | None, beta: float, additive: bool) -> SpatialCue:
    if quadrant is None:
        raise ConfigError(f"rule {rule.name!r} needs a cued quadrant (a spatial task)")
    return SpatialCue(int(quadrant), beta, additive=additive)


@dataclass(frozen=True)
class SpatialGain(GainRule):
    """Spatial attention to the cued quadrant on every map (see :class:`SpatialCue`)."""

    additive: bool = False
    spatial = True

    @property
    def name(self) -> str:
        return "spatial-additive" if self.additive else "spatial"

    def modulation(self, source, image_type, category, layer, beta, quadrant=None):
        return Modulation(spatial=_cue(self, quadrant, beta, self.additive))


@dataclass(frozen=True)
class CombinedGain(GainRule):
    """Spatial and feature attention together: factors multiplied, or added (``additive``)."""

    feature: FeatureGain = FeatureGain()
    additive: bool = False
    spatial = True

    @property
    def kind(self) -> str | None:  # type: ignore[override]
        return self.feature.kind

    @property
    def shuffled(self) -> bool:  # type: ignore[override]
        return self.feature.shuffled

    @property
    def positive_only(self) -> bool:  # type: ignore[override]
        return self.feature.positive_only

    @property
    def name(self) -> str:
        return f"spatial+{self.feature.name}" + ("-additive" if self.additive else "")

    def modulation(self, source, image_type, category, layer, beta, quadrant=None):
        scale = self.feature.modulation(source, image_type, category, layer, beta).scale
        return Modulation(scale=scale, spatial=_cue(self, quadrant, beta, self.additive))


_RULE_HELP = (
    "valid: tuning, gradient, uniform, optionally prefixed 'response-' (additive) and/or "
    "'shuffled-', or suffixed '-positive' (e.g. shuffled-gradient, response-tuning, "
    "gradient-positive); spatial attention: 'spatial' alone or 'spatial+' one of those "
    "multiplicative feature methods, optionally suffixed '-additive' (e.g. spatial+gradient, "
    "spatial+tuning-additive)"
)


def parse_rule(name: str | GainRule) -> GainRule:
    """The rule named ``name`` (``gradient``, ``shuffled-tuning``, ``spatial+tuning``, …).

    A rule object passes through unchanged. Unknown names raise :class:`ConfigError` listing
    what is valid.
    """
    if isinstance(name, GainRule):
        return name
    text = str(name).strip()
    feature = text
    spatial = additive_cue = False
    if text == "spatial" or text.startswith(("spatial+", "spatial-")):
        spatial = True
        feature = text.removeprefix("spatial")
        if feature.endswith("additive"):
            additive_cue, feature = True, feature.removesuffix("additive").removesuffix("-")
        if not feature:
            return SpatialGain(additive=additive_cue)
        feature = feature.removeprefix("+")
    parts = feature.split("-")
    response = shuffled = positive_only = False
    if parts and parts[0] == "response":
        response, parts = True, parts[1:]
    if parts and parts[0] == "shuffled":
        shuffled, parts = True, parts[1:]
    if parts and parts[-1] == "positive":
        positive_only, parts = True, parts[:-1]
    if len(parts) != 1 or parts[0] not in VALUE_KINDS:
        raise ConfigError(f"unknown method {text!r}; " + _RULE_HELP)
    try:
        if response:
            if spatial:
                raise ConfigError(
                    "a spatial cue combines with a feature gain, not with an additive response gain"
                )
            return ResponseGain(parts[0], shuffled, positive_only)
        rule = FeatureGain(parts[0], shuffled, positive_only)
    except ConfigError as error:
        raise ConfigError(f"method {text!r}: {error}; " + _RULE_HELP) from None
    return CombinedGain(rule, additive_cue) if spatial else rule


def parse_rules(names: str | GainRule | tuple | list) -> list[GainRule]:
    """Several rules from names (a comma-separated string or a sequence); none is an error."""
    if isinstance(names, (str, GainRule)):
        names = (
            [n for n in str(names).split(",") if n.strip()] if isinstance(names, str) else [names]
        )
    rules = [parse_rule(n) for n in names]
    if not rules:
        raise ConfigError("no methods given; e.g. tuning,gradient")
    return list(dict.fromkeys(rules))
