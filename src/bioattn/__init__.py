"""bioattn: biologically inspired attention in convolutional networks.

Reproduces and extends Lindsay & Miller (2018): feature similarity gain attention, applied to the
feature maps of a CNN, scaled by each map's category tuning or by its gradient with respect to a
binary detector's output.

The short API (see docs/architecture.md)::

    import bioattn

    exp = bioattn.prepare()                   # default network, detectors, images, values
    result = bioattn.sweep(exp, layers=["conv3_1"], betas=[0, 0.5, 1])
    result.table; result.plot()               # performance table; increase by layer (Figure)

``result.summary`` gives the performance increase per layer and method with 95 % intervals,
``result.save(folder)`` and ``bioattn.load_results(folder)`` keep it. ``run_sweep`` and the
generic loop (``Grid``, ``make_evaluator``, ``run``) are the same machinery one level down.

Attributes are imported when first used, so ``import bioattn`` stays light (torch is loaded only
by what needs it).
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from bioattn.errors import BioattnError

__version__ = "0.1.0"

#: Public name -> module that defines it.
_API = {
    "prepare": "bioattn.experiments.prepare",
    "Experiment": "bioattn.experiments.prepare",
    "ExperimentConfig": "bioattn.experiments.config",
    "load_config": "bioattn.experiments.config",
    "run": "bioattn.experiments.run",
    "run_sweep": "bioattn.experiments.sweep",
    "SweepConfig": "bioattn.experiments.sweep",
    "sweep": "bioattn.experiments.results",
    "SweepResult": "bioattn.experiments.results",
    "load_results": "bioattn.experiments.results",
    "PerformanceSink": "bioattn.experiments.run",
    "Grid": "bioattn.experiments.grid",
    "Arm": "bioattn.experiments.grid",
    "Condition": "bioattn.experiments.grid",
    "LayerSetting": "bioattn.experiments.grid",
    "layer_settings": "bioattn.experiments.grid",
    "make_evaluator": "bioattn.experiments.evaluate",
    "Probe": "bioattn.experiments.evaluate",
    "parse_rule": "bioattn.attention.rules",
    "ValueSource": "bioattn.attention.rules",
    "modulate": "bioattn.attention.gains",
    "Modulation": "bioattn.attention.gains",
    "make_task_set": "bioattn.data.tasks",
    "build_network": "bioattn.models.zoo",
    "run_replication": "bioattn.experiments.replication",
    "run_replicate": "bioattn.experiments.replication",
    "to_brainscore_assembly": "bioattn.experiments.assembly",
}

__all__ = [
    "Arm",
    "BioattnError",
    "Condition",
    "Experiment",
    "ExperimentConfig",
    "Grid",
    "LayerSetting",
    "Modulation",
    "PerformanceSink",
    "Probe",
    "SweepConfig",
    "SweepResult",
    "ValueSource",
    "__version__",
    "build_network",
    "layer_settings",
    "load_config",
    "load_results",
    "make_evaluator",
    "make_task_set",
    "modulate",
    "parse_rule",
    "prepare",
    "run",
    "run_replicate",
    "run_replication",
    "run_sweep",
    "sweep",
    "to_brainscore_assembly",
]

if TYPE_CHECKING:  # for type checkers and IDEs; at run time see __getattr__
    from bioattn.attention.gains import Modulation, modulate
    from bioattn.attention.rules import ValueSource, parse_rule
    from bioattn.data.tasks import make_task_set
    from bioattn.experiments.assembly import to_brainscore_assembly
    from bioattn.experiments.config import ExperimentConfig, load_config
    from bioattn.experiments.evaluate import Probe, make_evaluator
    from bioattn.experiments.grid import Arm, Condition, Grid, LayerSetting, layer_settings
    from bioattn.experiments.prepare import Experiment, prepare
    from bioattn.experiments.replication import run_replicate, run_replication
    from bioattn.experiments.results import SweepResult, load_results, sweep
    from bioattn.experiments.run import PerformanceSink, run
    from bioattn.experiments.sweep import SweepConfig, run_sweep
    from bioattn.models.zoo import build_network


def __getattr__(name: str) -> Any:
    """Import a public API name from its module on first use."""
    if name in _API:
        value = getattr(import_module(_API[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'bioattn' has no attribute {name!r}")
