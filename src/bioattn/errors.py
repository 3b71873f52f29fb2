"""Exceptions raised by bioattn. Every message says what was wrong and what would be right."""


class BioattnError(Exception):
    """Base class: the CLI prints these as one clear message instead of a traceback."""


class DataError(BioattnError):
    """Missing, corrupt or unusable data files or stimulus sets."""


class LayerError(BioattnError):
    """An unknown or unattendable layer name."""


class CategoryError(BioattnError):
    """An unknown category (or orientation) name."""


class WeightsError(BioattnError):
    """Weights that do not match the model, or a file that cannot be loaded safely."""


class ConfigError(BioattnError):
    """Invalid settings for an experiment or command."""
