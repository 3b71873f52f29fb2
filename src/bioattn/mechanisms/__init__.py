"""Attention mechanisms from machine learning, compared with feature similarity gain.

- :mod:`.glimpse` and :mod:`.ram`: hard spatial attention, the recurrent attention model (Mnih
  et al. 2014) with a multi-resolution glimpse sensor, trained with REINFORCE and a baseline.
- :mod:`.soft_spatial`: soft spatial attention (Xu et al. 2015), a category-cued softmax over the
  positions of a conv layer of the default network.
- :mod:`.dasnet`: soft feature attention by feedback (Stollenga et al. 2014), per-map gains set
  from top-layer activity.
- :mod:`.optimal`: directly optimised per-map gains, an upper bound for FSGM-style attention.
- :mod:`.compare`: all of them and FSGM on the same test sets, in one table and one figure.

Training is resumable (:mod:`.training`) and shows progress.
"""

from bioattn.mechanisms.compare import (
    MECHANISMS,
    CompareConfig,
    ComparisonResult,
    compare_mechanisms,
    run_comparison,
)
from bioattn.mechanisms.glimpse import glimpse_sensor
from bioattn.mechanisms.training import Budget, TrainingLog

__all__ = [
    "MECHANISMS",
    "Budget",
    "CompareConfig",
    "ComparisonResult",
    "TrainingLog",
    "compare_mechanisms",
    "glimpse_sensor",
    "run_comparison",
]
