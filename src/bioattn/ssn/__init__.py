"""The biologically detailed model: a CNN merged with a stabilized supralinear network (SSN).

* :mod:`bioattn.ssn.layer`: :class:`SSNParams`, :class:`SSNLayer` (E and I cells per map and
  position, lateral weights as convolutions, Euler integration to a steady state) and
  :class:`SSNInstabilityError`.
* :mod:`bioattn.ssn.builder`: :func:`build_ssn_network` (replace the ReLUs of chosen conv layers
  by SSNs, calibrate), :func:`ssn_attention` (attention as input current) and helpers.
* :mod:`bioattn.ssn.kernels`: the Gaussian spatial kernels and their convolutional operator.
* :mod:`bioattn.ssn.experiments`: the input-current attention sweep and the replication of
  findings 1 and 2 on the SSN-CNN.
* :mod:`bioattn.ssn.signatures`: summation, attention vs contrast, time courses.
* :mod:`bioattn.ssn.convergence`: convergence in Euler step and tolerance, cost per image.

The model, its parameters and the choices behind them are documented in ``docs/ssn.md``;
``bioattn ssn --help`` lists the commands.
"""

from bioattn.ssn.builder import (
    SSNBlock,
    build_ssn_network,
    calibrate_ssn,
    conv_output,
    fit_ssn_detectors,
    ssn_attention,
    ssn_blocks,
    ssn_layer,
    tuning_similarity,
)
from bioattn.ssn.layer import SSNInstabilityError, SSNLayer, SSNParams, SSNResult

__all__ = [
    "SSNBlock",
    "SSNInstabilityError",
    "SSNLayer",
    "SSNParams",
    "SSNResult",
    "build_ssn_network",
    "calibrate_ssn",
    "conv_output",
    "fit_ssn_detectors",
    "ssn_attention",
    "ssn_blocks",
    "ssn_layer",
    "tuning_similarity",
]
