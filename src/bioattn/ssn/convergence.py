"""Convergence and cost of the SSN-CNN: how the solver, Euler step and tolerance change its
outputs, and what an image costs compared with the plain network.

:func:`run_ssn_convergence` gives the table that justifies the default solver, ``dt`` and
``tol`` (docs/ssn.md); :func:`state_accuracy` each layer's steady state against a float64
solution of the same drive; :func:`layer_costs` the time, Euler steps and Newton iterations per
SSN layer; :func:`time_per_image` the cost of a whole network. :func:`run_ssn_benchmark` runs
them all on the default SSN-CNN (``bioattn ssn benchmark``, ``benchmarks/ssn.py``).
"""

from __future__ import annotations

import copy
import os
import platform
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

from bioattn.data.fashion_mnist import load_fashion_mnist
from bioattn.data.tasks import make_task_set
from bioattn.experiments.runfolder import environment_info
from bioattn.logs import progress_bar
from bioattn.models.network import Network
from bioattn.ssn.builder import conv_output, ssn_blocks
from bioattn.ssn.experiments import build_default_ssn, write_json
from bioattn.ssn.layer import SOLVERS, SSNParams

#: (solver, dt in ms, tol per ms) settings compared by :func:`run_ssn_convergence`; the first
#: (tight Euler) is the reference, ``("newton", 2.0, 1e-6)`` the default of
#: :class:`~bioattn.ssn.layer.SSNParams` (for Newton, dt only sets the stability check's and
#: the fallback's step).
CONVERGENCE_SETTINGS = (
    ("euler", 0.5, 1e-6),
    ("euler", 1.0, 1e-6),
    ("euler", 2.0, 1e-6),
    ("euler", 2.0, 1e-5),
    ("newton", 2.0, 1e-6),
    ("newton", 2.0, 1e-5),
    ("newton", 2.0, 1e-7),
)

__all__ = [
    "CONVERGENCE_SETTINGS",
    "layer_costs",
    "run_ssn_benchmark",
    "run_ssn_convergence",
    "ssn_settings",
    "state_accuracy",
    "time_per_image",
]


def time_per_image(network: Network, images: torch.Tensor, batch_size: int = 256) -> float:
    """Seconds per image of one pass of ``images`` to the readout (SSN memos cleared first)."""
    for block in ssn_blocks(network).values():
        block.ssn.clear_memo()
    started = time.perf_counter()
    network.readout_features(images, batch_size=batch_size)
    return (time.perf_counter() - started) / images.shape[0]


@contextmanager
def ssn_settings(ssn_network: Network, **changes: object) -> Iterator[None]:
    """Context in which every SSN layer of ``ssn_network`` runs with ``changes`` to its own
    :class:`SSNParams` (memos cleared); each layer's own parameters come back on exit."""
    blocks = ssn_blocks(ssn_network)
    own = {alias: block.ssn.params for alias, block in blocks.items()}
    try:
        for alias, block in blocks.items():
            block.ssn.params = replace(own[alias], **changes)
            block.ssn.clear_memo()
        yield
    finally:
        for alias, block in blocks.items():
            block.ssn.params = own[alias]


def _label(solver: str, dt: float, tol: float) -> str:
    return f"{solver}, dt={dt:g} ms, tol={tol:g}"


def _ssn_outputs(ssn_network: Network) -> tuple[list, dict[str, list[torch.Tensor]]]:
    """Forward hooks collecting every SSN layer's steady-state E rates, per batch."""
    collected: dict[str, list[torch.Tensor]] = {}
    handles = []
    for alias, block in ssn_blocks(ssn_network).items():
        collected[alias] = []

        def hook(_module, _inputs, output, store=collected[alias]) -> None:
            store.append(output.detach().clone())

        handles.append(block.ssn.register_forward_hook(hook))
    return handles, collected


def run_ssn_convergence(
    out_dir: str | Path,
    network: Network,
    ssn_network: Network,
    images: torch.Tensor,
    settings: Sequence[tuple[str, float, float]] = CONVERGENCE_SETTINGS,
    t_max: float = 4000.0,
    batch_size: int = 256,
    progress: bool = True,
) -> pd.DataFrame:
    """Readout features, steady states, class decisions and cost for several solver settings.

    The SSN-CNN keeps its calibration; only each layer's solver, Euler step and tolerance
    change (with a generous ``t_max`` so that the tolerance decides). The first setting is the
    reference: for every other one the table gives the largest relative deviation of the
    readout features and of every SSN layer's steady-state rates (max |Δ| / max |reference|,
    per image, then the largest over images and layers), the share of images whose 10-way
    decision (argmax of the classifier head) changes, seconds per image, the largest number of
    Euler steps and of Newton iterations of any layer, and the images handed from Newton to
    Euler. The plain network's cost is in the row with ``setting == "plain"``. Written to
    ``convergence.csv``.
    """
    out_dir = Path(out_dir)
    blocks = ssn_blocks(ssn_network)
    head = ssn_network.submodule(ssn_network.readout)
    rows = []
    reference: torch.Tensor | None = None
    reference_class: torch.Tensor | None = None
    reference_states: dict[str, torch.Tensor] = {}
    handed = {"n": 0}

    def count(module, _inputs, _output) -> None:
        handed["n"] += module.last_handed_to_euler

    for solver, dt, tol in progress_bar(settings, desc="SSN convergence", disable=not progress):
        handles, collected = _ssn_outputs(ssn_network)
        handles += [block.ssn.register_forward_hook(count) for block in blocks.values()]
        handed["n"] = 0
        try:
            with ssn_settings(ssn_network, solver=solver, dt=dt, tol=tol, t_max=t_max):
                started = time.perf_counter()
                features = ssn_network.readout_features(images, batch_size=batch_size)
                seconds = (time.perf_counter() - started) / images.shape[0]
                steps = [block.ssn.last_steps for block in blocks.values()]
                iterations = [block.ssn.last_iterations for block in blocks.values()]
        finally:
            for handle in handles:
                handle.remove()
        states = {alias: torch.cat(parts) for alias, parts in collected.items()}
        with torch.no_grad():
            decision = head(features).argmax(dim=1)
        if reference is None:
            reference, reference_class, reference_states = features, decision, states
        rows.append(
            {
                "setting": _label(solver, dt, tol),
                "solver": solver,
                "dt_ms": dt,
                "tol": tol,
                "seconds_per_image": seconds,
                "max_steps": max(steps, default=0),
                "max_iterations": max(iterations, default=0),
                "images_handed_to_euler": handed["n"],
                "max_relative_feature_deviation": _deviation(features, reference),
                "max_relative_state_deviation": max(
                    (_deviation(states[a], reference_states[a]) for a in states), default=0.0
                ),
                "decision_changes": float((decision != reference_class).float().mean()),
            }
        )
    rows.append(
        {
            "setting": "plain",
            "solver": "",
            "dt_ms": float("nan"),
            "tol": float("nan"),
            "seconds_per_image": time_per_image(network, images, batch_size),
            "max_steps": 0,
            "max_iterations": 0,
            "images_handed_to_euler": 0,
            "max_relative_feature_deviation": float("nan"),
            "max_relative_state_deviation": float("nan"),
            "decision_changes": float("nan"),
        }
    )
    table = pd.DataFrame(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    table.to_csv(out_dir / "convergence.csv", index=False)
    return table


def _per_image_deviation(values: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per image: max |values − reference| / max |reference|."""
    flat, ref = values.flatten(1), reference.flatten(1)
    scale = ref.abs().amax(dim=1).clamp(min=1e-12)
    return (flat - ref).abs().amax(dim=1) / scale


def _deviation(values: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest over images of :func:`_per_image_deviation`."""
    return float(_per_image_deviation(values, reference).max())


def state_accuracy(
    ssn_network: Network,
    images: torch.Tensor,
    settings: Sequence[tuple[str, float, float]] = CONVERGENCE_SETTINGS,
    reference_tol: float = 1e-10,
) -> pd.DataFrame:
    """Each SSN layer's steady state under each setting against a float64 Euler solution of
    the same drive to ``reference_tol`` (a fixed point does not depend on dt; the tolerance and
    float32 rounding do).

    Every layer gets the conv output of the network's own pass (default settings upstream), so
    the table isolates each solver's error from its propagation. Columns: layer, setting,
    ``max_relative_state_deviation`` (max over images of max |r − r_ref| / max r_ref, E and I
    cells) and ``median_relative_state_deviation`` (median over images).
    """
    rows = []
    for alias, block in ssn_blocks(ssn_network).items():
        x = conv_output(ssn_network, alias, images)
        tight = copy.deepcopy(block.ssn).double()
        tight.params = replace(block.ssn.params, solver="euler", tol=reference_tol, t_max=50_000.0)
        exact = tight.steady_state(*tight.drives(x.double()))
        reference = torch.stack([exact.r_e, exact.r_i], dim=1)
        for solver, dt, tol in settings:
            with ssn_settings(ssn_network, solver=solver, dt=dt, tol=tol, t_max=4000.0):
                result = block.ssn.steady_state(*block.ssn.drives(x))
            state = torch.stack([result.r_e, result.r_i], dim=1).double()
            per_image = _per_image_deviation(state, reference)
            rows.append(
                {
                    "layer": alias,
                    "setting": _label(solver, dt, tol),
                    "max_relative_state_deviation": float(per_image.max()),
                    "median_relative_state_deviation": float(per_image.median()),
                }
            )
    return pd.DataFrame(rows)


def layer_costs(ssn_network: Network, images: torch.Tensor) -> pd.DataFrame:
    """Seconds per image, Euler steps and Newton iterations of each SSN layer for one pass over
    ``images``, with each solver (the layer's own settings otherwise)."""
    rows = []
    for alias, block in ssn_blocks(ssn_network).items():
        x = conv_output(ssn_network, alias, images)
        for solver in SOLVERS:
            with ssn_settings(ssn_network, solver=solver):
                started = time.perf_counter()
                result = block.ssn.simulate(x)
                seconds = (time.perf_counter() - started) / x.shape[0]
            rows.append(
                {
                    "layer": alias,
                    "solver": solver,
                    "shape": "x".join(str(s) for s in x.shape[1:]),
                    "seconds_per_image": seconds,
                    "steps": result.steps,
                    "iterations": result.iterations,
                    "images_handed_to_euler": result.handed_to_euler,
                    "mean_e_rate_hz": float(result.r_e.mean()),
                    "mean_i_rate_hz": float(result.r_i.mean()),
                    "max_e_rate_hz": float(result.r_e.max()),
                }
            )
    return pd.DataFrame(rows)


def run_ssn_benchmark(
    out_dir: str | Path,
    n_images: int = 64,
    category: str = "Coat",
    repeats: int = 2,
    settings: Sequence[tuple[str, float, float]] | None = None,
    params: SSNParams | None = None,
    batch_size: int = 256,
    data_dir: str | Path | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, pd.DataFrame]:
    """Cost per image (plain network and SSN-CNN side by side), per-layer cost and convergence.

    Builds the default SSN-CNN (:func:`~bioattn.ssn.experiments.build_default_ssn`) and uses
    ``n_images`` merged test images of the ``category`` task (half positives). Writes under
    ``out_dir``: ``cost.csv`` (``repeats`` alternating timings of the plain network and the
    SSN-CNN with the Newton and the Euler solver, on the same images), ``layer_costs.csv``,
    ``convergence.csv`` (:func:`run_ssn_convergence`; ``None`` settings use its defaults; an
    empty sequence skips it) and ``machine.json``. Returns the tables by name.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    test = load_fashion_mnist("test", data_dir)
    half = max(1, n_images // 2)
    task = make_task_set(test, category, "merged", n_pos=half, n_neg=n_images - half, seed=seed)
    network, ssn_network, _values = build_default_ssn(params, data_dir=data_dir, seed=seed)
    images = task.images
    rows = []
    for rep in range(repeats):
        for name, net, solver in (
            ("plain", network, None),
            ("ssn-newton", ssn_network, "newton"),
            ("ssn-euler", ssn_network, "euler"),
        ):
            with ssn_settings(ssn_network, **({} if solver is None else {"solver": solver})):
                seconds = time_per_image(net, images, batch_size)
            rows.append(
                {
                    "network": name,
                    "rep": rep,
                    "seconds_per_image": seconds,
                    "load_average_1min": os.getloadavg()[0],
                }
            )
    tables = {"cost": pd.DataFrame(rows), "layer_costs": layer_costs(ssn_network, images)}
    if settings is None or len(settings) > 0:
        kwargs = {} if settings is None else {"settings": tuple(settings)}
        tables["state_accuracy"] = state_accuracy(ssn_network, images, **kwargs)
        tables["state_accuracy"].to_csv(out_dir / "state_accuracy.csv", index=False)
        tables["convergence"] = run_ssn_convergence(
            out_dir,
            network,
            ssn_network,
            images,
            batch_size=batch_size,
            progress=progress,
            **kwargs,
        )
    for name in ("cost", "layer_costs"):
        tables[name].to_csv(out_dir / f"{name}.csv", index=False)
    write_json(
        out_dir / "machine.json",
        {
            **environment_info(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "n_images": int(images.shape[0]),
            "image_shape": list(images.shape[1:]),
            "batch_size": batch_size,
        },
    )
    return tables
