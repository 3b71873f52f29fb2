"""Plans: what a command will do, checked before any of it is done.

A long job should fail in its first second, not after an hour of training or value computing:
every name (layers, categories, methods, image types) and setting is checked against a
:class:`Sketch` of the experiment, which costs almost nothing: the network's architecture
(random weights for an embedded default that still has to be trained, the user's weights
otherwise, so a mismatch is found here too) and the category names read from the data's
folder names or class list, without loading images.

A :class:`Plan` lists the facts (network, categories, grid), the work (forward passes of
images, with a rough time from one timed forward pass of the sketch) and the outputs (with an
estimate of the disk they take). ``--dry-run`` prints it and exits; a real run computes it
first, so that bad input is refused before any work.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bioattn.errors import ConfigError
from bioattn.report.tables import format_duration

if TYPE_CHECKING:
    from bioattn.experiments.config import ExperimentConfig
    from bioattn.experiments.sweep import SweepConfig
    from bioattn.models.network import Network

__all__ = [
    "FORWARD",
    "FORWARD_BACKWARD",
    "Plan",
    "Sketch",
    "Work",
    "plan_experiment",
    "plan_sweep",
    "sketch",
]

#: Cost of one image through the network, in forward passes: inference, and a gradient or a
#: training step (a backward pass costs about two forward passes).
FORWARD = 1.0
FORWARD_BACKWARD = 3.0
#: Bytes on disk per row of a results table (parquet, compressed; measured on sweep shards).
BYTES_PER_ROW = 120


@dataclass
class Work:
    """One part of a job: ``images`` passes through the network, each ``cost`` forward passes."""

    what: str
    images: int
    cost: float = FORWARD

    @property
    def forward_passes(self) -> float:
        """Forward-pass equivalents of this part."""
        return self.images * self.cost


@dataclass
class Plan:
    """What a command will do: facts, work, outputs, notes; :meth:`format` prints it."""

    command: str
    facts: list[tuple[str, str]] = field(default_factory=list)
    work: list[Work] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    disk_bytes: int = 0
    notes: list[str] = field(default_factory=list)
    seconds_per_image: float | None = None

    @property
    def forward_passes(self) -> float:
        """Forward-pass equivalents of the whole job."""
        return sum(w.forward_passes for w in self.work)

    @property
    def seconds(self) -> float | None:
        """Rough run time: forward passes × the timed seconds per image (an upper bound for
        sweeps, whose engine reuses the layers before the attended one)."""
        if self.seconds_per_image is None:
            return None
        return self.forward_passes * self.seconds_per_image

    def format(self) -> str:
        """The plan as the ``--dry-run`` output: nothing has been run."""
        lines = [f"bioattn {self.command} --dry-run: the plan (nothing was run)"]
        width = max((len(k) for k, _ in self.facts), default=0)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in self.facts]
        if self.work:
            lines.append("work:")
            for item in self.work:
                cost = "" if item.cost == FORWARD else " (forward + backward)"
                lines.append(f"  {item.what}: {item.images:,} images{cost}")
            if self.seconds is not None:
                lines.append(
                    f"  estimated time: {format_duration(self.seconds)} (from one timed "
                    f"forward pass here, {self.seconds_per_image * 1e3:.2f} ms per image; rough)"
                )
        else:
            lines.append("work: none (everything needed is there)")
        if self.outputs:
            lines.append("writes:")
            lines += [f"  {o}" for o in self.outputs]
            if self.disk_bytes:
                lines.append(f"  estimated disk: {_size(self.disk_bytes)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


# --- the sketch of an experiment ---------------------------------------------------------
@dataclass
class Sketch:
    """An experiment's shape, without its work: the network (architecture and, for user
    models, weights), the category names and whether the default network must be trained."""

    network: Network
    categories: tuple[str, ...]
    needs_training: bool = False
    train_images: int | None = None  # training images, when known without loading them
    model_cache: Path | None = None
    image_size: int | None = None  # side of the images fed to the network, when known

    def time_forward(self, max_batch: int = 256, enough: float = 0.2) -> float:
        """Seconds per image of one forward pass here: batches grow (8, 32, 128, ...) until
        one takes ``enough`` seconds or reaches ``max_batch``, as sweeps run in large batches
        and small ones overstate the cost per image many times over; best of two timings."""
        import torch

        network = self.network
        side = network.input_size or self.image_size or network.sites.probe_size
        batch = 8
        with torch.no_grad():
            while True:
                x = torch.zeros(batch, network.input_channels, side, side, device=network.device)
                network(x)  # warm-up: the first call of a shape allocates
                best = float("inf")
                for _ in range(2):
                    started = time.perf_counter()
                    network(x)
                    best = min(best, time.perf_counter() - started)
                if best >= enough or batch >= max_batch:
                    return best / batch
                batch = min(4 * batch, max_batch)


def sketch(config: ExperimentConfig) -> Sketch:
    """The :class:`Sketch` of ``config``: its network and categories, checked, cheaply."""
    from bioattn.data.fashion_mnist import IMAGE_SIZE
    from bioattn.experiments.prepare import (
        configured_network,
        data_categories,
        embedded_architecture,
        folder_geometry,
    )
    from bioattn.models.zoo import build_network

    categories, n_train = data_categories(config.data)
    image_size = IMAGE_SIZE if config.data.kind == "fashion-mnist" else None
    architecture = embedded_architecture(config)
    if architecture is not None:
        from bioattn.data.fashion_mnist import find_data_dir
        from bioattn.models.train import TrainSettings, model_dir

        settings = TrainSettings(seed=config.model.seed, architecture=architecture)
        cache = model_dir(settings, find_data_dir(config.data.path or None))
        network = build_network(architecture, widths=settings.widths, seed=settings.seed)
        needs_training = not (cache / "metrics.json").exists()
        result = Sketch(network, categories, needs_training, n_train, cache, image_size)
    else:
        network = configured_network(config)
        if config.data.kind == "image-folder":
            image_size = folder_geometry(config.data, network)[0]
        result = Sketch(network, categories, False, n_train, image_size=image_size)
    network.to(config.model.device)
    return result


# --- plans --------------------------------------------------------------------------------
def plan_experiment(
    config: ExperimentConfig,
    command: str,
    *,
    run_dir: str | Path | None = None,
    value_types: Sequence[str] | None = None,
    reuse_values: bool = True,
    epochs: int | None = None,
    layers: Sequence[str] = (),
    categories: Sequence[str] = (),
    methods: Sequence[str] = (),
    outputs: Sequence[str] = (),
    timed: bool = True,
) -> tuple[Plan, Sketch]:
    """Check ``config`` and the layers, categories and methods a command names; plan what
    :func:`~bioattn.experiments.prepare.prepare` will do (train the default network, fit
    detectors, compute values for ``value_types``; ``None``: no values; values already there
    count as no work, unless not ``reuse_values``). Returns the plan and
    the sketch, to which a command adds its own work."""
    from bioattn.attention.rules import parse_rules
    from bioattn.data.imageset import resolve_categories

    shape = sketch(config)
    network = shape.network
    run = Path(config.run.out if run_dir is None else run_dir)
    plan = Plan(command, outputs=list(outputs))
    plan.facts = [
        ("network", f"{network.name} ({len(network.layers)} attendable layers)"),
        ("categories", f"{len(shape.categories)}: {', '.join(shape.categories)}"),
    ]
    if layers:
        plan.facts.append(("layers", ", ".join(network.resolve_layer(n).alias for n in layers)))
    if categories:
        chosen = resolve_categories(categories, shape.categories)
        plan.facts.append(("attended", ", ".join(chosen)))
    if methods:
        plan.facts.append(("methods", ", ".join(r.name for r in parse_rules(methods))))
    if shape.needs_training:
        from bioattn.models.train import TrainSettings

        epochs = TrainSettings().epochs if epochs is None else epochs
        images = epochs * (shape.train_images or 0)
        plan.work.append(Work(f"train {network.name} ({epochs} epochs)", images, FORWARD_BACKWARD))
        plan.notes.append(f"the trained network is kept in {shape.model_cache}")
    elif shape.model_cache is None and not (run / "detectors.safetensors").exists():
        n = config.data.detector_images * len(shape.categories)
        plan.work.append(Work("fit detectors", n))
    if value_types is not None:
        if config.values.path and reuse_values:
            if not Path(config.values.path).exists():
                raise ConfigError(f"[values] path {config.values.path} does not exist")
        elif not reuse_values or not (run / "values.nc").exists():
            types = [t for t in value_types if t != "noise"]
            gradient = 2 * config.values.gradient_images * len(shape.categories) * len(types)
            plan.work.append(Work("tuning values", shape.train_images or 0))
            if gradient:
                plan.work.append(Work("gradient values", gradient, FORWARD_BACKWARD))
            plan.disk_bytes += _values_bytes(network, len(shape.categories), len(types))
    if timed:
        plan.seconds_per_image = shape.time_forward()
    return plan, shape


def plan_sweep(
    config: ExperimentConfig,
    command: str = "sweep",
    *,
    sweep: SweepConfig | None = None,
    selection: bool = False,
    networks: int = 1,
    epochs: int | None = None,
    timed: bool = True,
) -> Plan:
    """Check a sweep's names and settings and plan it (``sweep`` defaults to ``config``'s):
    conditions, shards, images, time and disk.

    ``selection`` adds the selection sweep on training images (the replication's choice of β
    and layers); ``networks`` repeats the whole for several trained networks.
    """
    from bioattn.experiments.sweep import check_sweep

    sweep = config.sweep if sweep is None else sweep
    run_dir = Path(config.run.out)
    plan, shape = plan_experiment(
        config,
        command,
        value_types=sweep.image_types,
        epochs=epochs,
        outputs=[
            f"{run_dir}/ (shards/, performance.parquet, gains.csv, summary.csv, figures/, "
            "config.json)"
        ],
        timed=timed,
    )
    checked = check_sweep(sweep, shape.network, shape.categories)
    grid, categories = checked.grid, checked.categories
    task_sets = len(sweep.image_types) * len(categories)
    conditions = task_sets * len(grid)
    shards = len(categories) * len(grid.settings)
    plan.notes += checked.notes
    plan.facts[1:] = [
        ("categories", f"{len(categories)}: {', '.join(categories)}"),
        ("image types", ", ".join(sweep.image_types)),
        ("layers", ", ".join(s.name for s in grid.settings)),
        ("methods", ", ".join(r.name for r in grid.rules)),
        ("β", ", ".join(f"{b:g}" for b in grid.betas)),
        ("conditions", f"{conditions:,} ({task_sets} task sets × {len(grid)} per set)"),
        ("shards", f"{shards} (category × layer setting; finished shards are skipped)"),
    ]
    sweeps = 2 if selection else 1
    what = "attention sweep" + (" (selection and test images)" if selection else "")
    plan.work.append(Work(what, sweeps * conditions * (sweep.n_pos + sweep.n_neg)))
    if networks > 1:
        plan.facts.append(("networks", f"{networks} (the whole plan once per network)"))
        for item in plan.work:
            item.images *= networks
    plan.disk_bytes = networks * (plan.disk_bytes + sweeps * conditions * BYTES_PER_ROW)
    plan.facts.append(("executor", _executor(config)))
    return plan


def _executor(config: ExperimentConfig) -> str:
    """Where the shards run; ``submitit`` is refused here, not after the values, when the
    package is missing."""
    import importlib.util

    run = config.run
    if run.executor == "submitit" and importlib.util.find_spec("submitit") is None:
        raise ConfigError(
            "executor 'submitit' needs the submitit package: pip install 'bioattn[cluster]' "
            "(or use executor 'local' or 'process')"
        )
    if run.executor == "local":
        return "local (this process)"
    return f"{run.executor} ({run.workers} workers)"


def _values_bytes(network: Network, categories: int, image_types: int) -> int:
    """Bytes of a values file: float32 tuning and per-image-type gradient values per map."""
    maps = sum(layer.channels for layer in network.layers)
    return 4 * maps * categories * (1 + image_types)
