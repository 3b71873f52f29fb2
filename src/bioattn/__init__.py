"""bioattn: biologically inspired attention in convolutional networks.

Reproduces and extends Lindsay & Miller (2018): feature similarity gain attention, applied to the
feature maps of a CNN, scaled by each map's category tuning or by its gradient with respect to a
binary detector's output.
"""

from bioattn.errors import BioattnError

__version__ = "0.1.0"
__all__ = ["BioattnError", "__version__"]
