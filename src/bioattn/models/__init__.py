"""Models: the zoo (embedded Fashion-MNIST nets, VGG-16, user callables), weights, layer names."""

from __future__ import annotations

from bioattn.models.network import LayerInfo, Network
from bioattn.models.weights import load_state_dict_file, load_weights, save_weights
from bioattn.models.zoo import (
    FASHION_ARCHITECTURES,
    FASHION_CATEGORIES,
    FASHION_MEAN,
    FASHION_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16,
    FashionArchitecture,
    FashionVGG,
    build_network,
    list_models,
)

__all__ = [
    "FASHION_ARCHITECTURES",
    "FASHION_CATEGORIES",
    "FASHION_MEAN",
    "FASHION_STD",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16",
    "FashionArchitecture",
    "FashionVGG",
    "LayerInfo",
    "Network",
    "build_network",
    "list_models",
    "load_state_dict_file",
    "load_weights",
    "save_weights",
]
