"""The plan of each command: every name and setting checked before any work, and what
``--dry-run`` prints (:class:`~bioattn.experiments.plan.Plan`).

:func:`plan_command` runs before every command (with ``--dry-run`` instead of it): bad layer,
category or method names, missing input files and unstable SSN parameters are refused in the
first second, before a network is trained or values are computed. Sweeps (``sweep``, ``demo``,
``replicate``) and recordings are planned in full (conditions, shards, images, time, disk);
the other experiments list their checked names, the shared work (training, detectors, values)
and their outputs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

from bioattn.cli.common import experiment_config, refuse_epochs
from bioattn.errors import ConfigError, DataError
from bioattn.experiments.plan import Plan

__all__ = ["plan_command"]

#: Arguments naming layers of the network, and categories of the data.
LAYER_ARGS = ("layer", "attend_layers", "record_layers", "full_maps", "soft_layer")
CATEGORY_ARGS = ("categories", "category")
#: Path arguments that name inputs, which must exist.
INPUT_ARGS = ("config", "run_dir", "recording", "values", "file")


def plan_command(args: argparse.Namespace, timed: bool = False) -> Plan:
    """Check ``args`` and plan the command (``timed``: time one forward pass for the
    estimate, as ``--dry-run`` does)."""
    _check_inputs(args)
    planner = PLANNERS.get(args.command_path)
    if planner is not None:
        return planner(args, timed)
    if not hasattr(args, "config"):  # reads and writes files, or only lists a model's sites
        facts = _input_facts(args)
        if hasattr(args, "model"):
            facts.insert(0, ("model", str(args.model)))
        return Plan(args.command_path, facts=facts, outputs=_outputs(args))
    return _experiment_plan(args, timed)


def _check_inputs(args: argparse.Namespace) -> None:
    for name in INPUT_ARGS:
        value = getattr(args, name, None)
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, Path) and not path.exists():
                flag = f"--{name.replace('_', '-')}" if name in ("config", "values") else name
                raise DataError(f"{flag} {path} does not exist; check the path")


def _input_facts(args: argparse.Namespace) -> list[tuple[str, str]]:
    facts = []
    for name in INPUT_ARGS:
        value = getattr(args, name, None)
        for path in value if isinstance(value, list) else [value]:
            if isinstance(path, Path):
                facts.append(("reads", str(path)))
    return facts


def _outputs(args: argparse.Namespace) -> list[str]:
    out = getattr(args, "out", None) or getattr(args, "out_dir", None)
    if out is None and hasattr(args, "run_dir"):
        runs = args.run_dir if isinstance(args.run_dir, list) else [args.run_dir]
        return [f"{run}/ (tables, figures or report)" for run in runs]
    return [] if out is None else [str(out)]


def _names(args: argparse.Namespace, names: Sequence[str]) -> list[str]:
    found: list[str] = []
    for name in names:
        value = getattr(args, name, None)
        if value:
            found += [value] if isinstance(value, str) else list(value)
    return found


def _experiment_plan(
    args: argparse.Namespace,
    timed: bool,
    *,
    value_types: Sequence[str] | None = None,
    run_dir: Path | None = None,
    config_sections: dict | None = None,
) -> Plan:
    """A model-running command: its model, data and named layers, categories and methods."""
    from bioattn.experiments.plan import plan_experiment

    refuse_epochs(args)
    config = experiment_config(args, **(config_sections or {}))
    out = getattr(args, "out", None) or getattr(args, "out_dir", None)
    plan, _shape = plan_experiment(
        config,
        args.command_path,
        run_dir=run_dir or out,
        value_types=value_types,
        layers=_names(args, LAYER_ARGS),
        categories=_names(args, CATEGORY_ARGS),
        methods=_names(args, ("methods",)),
        outputs=_outputs(args),
        timed=timed,
    )
    return plan


# --- the commands planned in full --------------------------------------------------------
def _plan_sweep(args: argparse.Namespace, timed: bool) -> Plan:
    from bioattn.cli.sweep import sweep_config
    from bioattn.experiments.plan import plan_sweep

    return plan_sweep(sweep_config(args), timed=timed)


def _plan_replication(args: argparse.Namespace, timed: bool) -> Plan:
    from bioattn.cli.sweep import DEMO_DEFAULT_ONLY, REPLICATE_DEFAULT_ONLY, replication_settings
    from bioattn.experiments.plan import plan_sweep

    demo = args.command_path == "demo"
    config, sweep, settings = replication_settings(
        args, DEMO_DEFAULT_ONLY if demo else REPLICATE_DEFAULT_ONLY
    )
    config = replace(config, run=replace(config.run, out=str(args.out)))
    networks = 1 if demo else args.networks
    plan = plan_sweep(
        config,
        args.command_path,
        sweep=sweep,
        selection=True,
        networks=networks,
        epochs=settings.epochs,
        timed=timed,
    )
    plan.outputs = [f"{args.out}/ (tables, figures, findings.csv, comparisons.csv, config.json)"]
    if demo and args.all:
        plan.outputs += [f"{args.out}/orientation/", f"{args.out}/cueing/"]
        plan.notes.append("--all's orientation and cueing experiments are not counted")
    return plan


def _plan_train(args: argparse.Namespace, timed: bool) -> Plan:
    from bioattn.cli.model import train_settings
    from bioattn.experiments.plan import FORWARD_BACKWARD, Work, plan_experiment

    config, settings = train_settings(args)
    plan, shape = plan_experiment(config, "train", epochs=settings.epochs, timed=timed)
    if args.retrain and not shape.needs_training:
        images = settings.epochs * (shape.train_images or 0)
        plan.work.append(Work(f"train {shape.network.name}", images, FORWARD_BACKWARD))
    plan.outputs = [f"{shape.model_cache}/ (model, detectors, metrics)"]
    return plan


def _plan_values(args: argparse.Namespace, timed: bool) -> Plan:
    from bioattn.cli.model import values_image_types
    from bioattn.experiments.plan import plan_experiment

    refuse_epochs(args)
    config = experiment_config(args)
    plan, _ = plan_experiment(
        config,
        "values",
        run_dir=Path(args.out).parent,
        value_types=values_image_types(args, config),
        reuse_values=False,
        outputs=[str(args.out)],
        timed=timed,
    )
    return plan


def _plan_record(args: argparse.Namespace, timed: bool) -> Plan:
    values = None if args.values is None else str(args.values)
    config = experiment_config(args, values={"path": values})
    if not config.values.path:
        raise ConfigError(
            "a recording needs values: give --values FILE (from `bioattn values` or a sweep's "
            "values.nc) or [values] path in the --config file"
        )
    if not Path(config.values.path).exists():
        raise DataError(f"values file {config.values.path} does not exist; check the path")
    return _experiment_plan(
        args,
        timed,
        value_types=(),
        run_dir=Path(config.values.path).parent,
        config_sections={"values": {"path": values}},
    )


def _plan_noise(args: argparse.Namespace, timed: bool) -> Plan:
    return _experiment_plan(args, timed, value_types=())


def _plan_mechanisms(args: argparse.Namespace, timed: bool) -> Plan:
    from bioattn.mechanisms.compare import CompareConfig

    types = args.image_types or CompareConfig().image_types
    return _experiment_plan(args, timed, value_types=types)


def _plan_ssn(args: argparse.Namespace, timed: bool) -> Plan:
    from bioattn.cli.ssn import ssn_setup

    ssn_setup(args)  # SSN parameters and model options, checked
    plan = _experiment_plan(args, timed)
    plan.notes.append("the SSN-CNN is built from the trained default network at the start")
    return plan


PLANNERS: dict[str, Callable[[argparse.Namespace, bool], Plan]] = {
    "sweep": _plan_sweep,
    "demo": _plan_replication,
    "replicate": _plan_replication,
    "train": _plan_train,
    "values": _plan_values,
    "record": _plan_record,
    "noise": _plan_noise,
    "mechanisms": _plan_mechanisms,
    "ssn replicate": _plan_ssn,
    "ssn signatures": _plan_ssn,
    "ssn benchmark": _plan_ssn,
    "ssn convergence": _plan_ssn,
}
