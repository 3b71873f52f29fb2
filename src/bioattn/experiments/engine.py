"""Sweep engine: many attention conditions on one image set for far less work than one forward
pass per condition.

A sweep evaluates thousands of *conditions* (a modulation of one or more layers) on the same
task images. The naive way, :func:`naive_condition_logits`, runs the whole network once per
condition with a forward hook per attended layer. :class:`SweepEngine` computes the same
detector logits with much less work:

1. **Prefix sharing.** Attention at layer l leaves everything before l unchanged. The network is
   split with ``torch.fx`` at the attended activation: the *head* (input → activity of l) runs once
   per (image set, layer); only the *tail* (activity of l → readout features) runs per condition.
   With attention at several layers (all-layers mode) the split is at the earliest one and the
   tail applies the other layers' modulations inside it. :meth:`SweepEngine.baseline_logits`
   (the β = 0 pass a sweep needs anyway) keeps every layer's activity when it fits the memory
   budget, so a whole sweep of one image set costs one full forward pass plus the tails.
2. **Batching conditions.** ``M`` conditions × ``N`` images go through the tail as rows of one
   batch (condition-major), in chunks sized by a memory budget, with each row's modulation
   gathered from the stacked per-condition scales and shifts.
3. **Memory layout.** Tail activity runs in ``channels_last`` layout, which the CPU convolution
   kernels process faster for the narrow layers of the default network, and the tails apply
   ReLUs in place (``torch.relu_``) where nothing else reads their input: same values, one
   buffer fewer. (So forward hooks on those ReLU modules do not fire inside the engine.)

Everything else is exactly the naive computation (same operations, same modulation arithmetic),
so logits agree with the naive path to float32 rounding (tests check ≤ 1e-5).

Models that ``torch.fx`` cannot trace, or whose structure the split does not support, fall back to
the naive path with a warning (once per model class), so the engine is always safe to use.

:meth:`SweepEngine.condition_readings` also returns *readings* of chosen layers' activity (a
probe such as :class:`bioattn.experiments.evaluate.Probe`): the tails return the probed layers'
activity beside the features (probed tails apply no in-place ReLUs), and layers before the split
are read once per task from the unattended pass, since attention does not change them.
"""

from __future__ import annotations

import warnings
import weakref
from collections import Counter
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, is_dataclass, replace
from pathlib import Path
from typing import Protocol

import torch
from torch import fx, nn

from bioattn.attention.gains import Modulation, as_nchw, modulate
from bioattn.data.tasks import TaskSet
from bioattn.errors import ConfigError
from bioattn.models.detectors import Detectors
from bioattn.models.hooks import capture_activity
from bioattn.models.network import LayerInfo, Network
from bioattn.models.sites import attribute

__all__ = [
    "DEFAULT_CHUNK_BYTES",
    "DEFAULT_MEMORY_BUDGET",
    "ProbeLike",
    "SweepEngine",
    "available_memory",
    "naive_condition_logits",
    "target_logits",
]

#: Hard cap on the activity a chunk (and a cached image block) may hold, in bytes.
DEFAULT_MEMORY_BUDGET = 512 * 2**20
#: Working set a chunk aims for: small enough to stay near the CPU caches, large enough to keep
#: per-call overhead low. Measured on the default network (see BENCHMARKS.md).
DEFAULT_CHUNK_BYTES = 24 * 2**20

_warned_models: set[str] = set()


def target_logits(
    network: Network,
    detectors: Detectors,
    task: TaskSet,
    modulations: Mapping[LayerInfo | str | int, Modulation] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Logits of ``task``'s target detector for each of its images under ``modulations``.

    One full forward pass with a hook per modulated layer: the reference computation.
    """
    target = detectors.index(task.target_name)
    with modulate(network, modulations or {}):
        features = network.readout_features(task.images, batch_size=batch_size)
    with torch.no_grad():
        return detectors.logits(features)[:, target]


def naive_condition_logits(
    network: Network,
    detectors: Detectors,
    task: TaskSet,
    conditions: Sequence[Mapping[LayerInfo | str | int, Modulation]],
    batch_size: int = 256,
) -> torch.Tensor:
    """Target logits (M, N) for M conditions, one full hooked forward pass per condition."""
    rows = [target_logits(network, detectors, task, c, batch_size) for c in conditions]
    if not rows:
        return torch.empty(0, task.images.shape[0])
    return torch.stack(rows)


def available_memory() -> int | None:
    """Bytes of memory available now (Linux ``MemAvailable``), or None where unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class ProbeLike(Protocol):
    """What :meth:`SweepEngine.condition_readings` reads (as
    :class:`bioattn.experiments.evaluate.Probe`).

    ``reduce`` turns per-layer activity (R, C, H, W) keyed by alias into readings (R, …):
    ``maps_<alias>`` keys hold one layer each; every other key concatenates the layers of
    ``layers`` along dim 1, each over its C units. The engine splits a probe by layer with
    :func:`dataclasses.replace` (other probes run the naive path).
    """

    @property
    def layers(self) -> Sequence[LayerInfo]: ...

    @property
    def full_maps(self) -> Sequence[LayerInfo]: ...

    @property
    def hooked(self) -> list[LayerInfo]: ...

    def reduce(self, activity: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...


class _SplitError(Exception):
    """The network cannot be split for this set of attended layers."""


class _RowModulation(nn.Module):
    """``r' = r * scale + shift`` (clamped at 0 with a shift) with one scale/shift per batch row.

    Inserted into a tail after a modulated activation; ``scale`` and ``shift`` are set per chunk
    to (R, a, b, c) tensors that broadcast against the (R, C, H, W) activity.
    """

    def __init__(self) -> None:
        super().__init__()
        self.scale: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.scale is not None:
            out = out * self.scale
        if self.shift is not None:
            out = torch.clamp(out + self.shift, min=0.0)
        return out


@dataclass
class _Tail:
    """A graph from boundary activity to readout features, with its inner modulations."""

    module: fx.GraphModule
    modulations: list[tuple[_RowModulation, LayerInfo]]


@dataclass
class _Plan:
    """How to run conditions that modulate one set of layers."""

    start_layer: LayerInfo  # the layer whose activity the tail starts from
    head: fx.GraphModule  # preprocessed images -> boundary tensors (start activity first)
    n_boundary: int
    tail: _Tail
    reused: bool  # an attended layer is a group (several calls of one module)
    probed: tuple[LayerInfo, ...] = ()  # layers whose activity the tail returns after features
    start_probed: bool = False  # the start layer is probed (read from the modulated start rows)


class _Splitter:
    """The traced network and the sub-graphs (heads and tails) cut from it."""

    def __init__(self, network: Network) -> None:
        self.network = network
        if network.sites.graph is None:
            raise _SplitError(f"torch.fx could not trace it ({network.sites.trace_error})")
        self.gm = network.sites.graph
        self.nodes = list(self.gm.graph.nodes)
        self.order = {node: i for i, node in enumerate(self.nodes)}
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise _SplitError(f"forward takes {len(inputs)} inputs; the engine needs exactly one")
        self.input = inputs[0]
        readouts = [n for n in self.nodes if n.op == "call_module" and n.target == network.readout]
        if len(readouts) != 1 or not readouts[0].args:
            raise _SplitError(f"readout module {network.readout!r} is not called exactly once")
        readout_input = readouts[0].args[0]
        if not isinstance(readout_input, fx.Node):
            raise _SplitError("the readout module's input is not a traced tensor")
        self.readout_input = readout_input
        self.by_name = {node.name: node for node in self.nodes}
        # Nodes whose value depends on the images (everything else is a constant of the model).
        self.varying: set[fx.Node] = set()
        for node in self.nodes:
            if node is self.input or any(a in self.varying for a in node.all_input_nodes):
                self.varying.add(node)

    def layer_nodes(self, layer: LayerInfo) -> list[fx.Node]:
        """The graph nodes whose outputs are ``layer``'s activity (several for a group)."""
        return [self.by_name[name] for name in layer.nodes if name in self.by_name]

    # --- graph surgery ---------------------------------------------------------------------
    def boundary(self, start: fx.Node) -> list[fx.Node]:
        """Image-dependent values computed up to ``start`` that the readout needs after it.

        ``start`` comes first. Anything else (a skip connection around the split) must be fed
        to the tail alongside it.
        """
        position = self.order[start]
        found: list[fx.Node] = []
        seen: set[fx.Node] = set()
        stack = [self.readout_input]
        while stack:
            node = stack.pop()
            if node in seen:
                continue
            seen.add(node)
            if node in self.varying and self.order[node] <= position:
                found.append(node)
            else:
                stack.extend(node.all_input_nodes)
        if start not in found:
            raise _SplitError(f"the readout does not depend on {start.target!r}")
        return [start, *sorted((n for n in found if n is not start), key=self.order.__getitem__)]

    def extract(
        self,
        inputs: Sequence[fx.Node],
        outputs: Sequence[fx.Node],
        modulated: Mapping[fx.Node, LayerInfo] | None = None,
        flatten: bool = False,
        inplace_relu: bool = False,
    ) -> _Tail:
        """A GraphModule computing ``outputs`` from ``inputs``, with modulations after nodes.

        Returns a single tensor for one output, else a tuple; ``flatten`` flattens the first
        output from dim 1, as the readout hook does. With ``inplace_relu``, ReLU modules whose
        input is used by nothing else become in-place ``torch.relu_`` calls (same values, no new
        buffer).
        """
        modulated = modulated or {}
        stop = set(inputs)
        needed: set[fx.Node] = set()
        stack = list(outputs)
        while stack:
            node = stack.pop()
            if node in needed or node in stop:
                continue
            if node.op == "placeholder":
                raise _SplitError("part of the network after the split reads the input directly")
            needed.add(node)
            stack.extend(node.all_input_nodes)
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for i, node in enumerate(inputs):
            env[node] = graph.placeholder(f"boundary_{i}")
        attributes: dict[str, object] = {}
        hooks: list[tuple[_RowModulation, LayerInfo]] = []
        for node in self.nodes:
            if node not in needed:
                continue
            if inplace_relu and self._fusable_relu(node, needed):
                copy = graph.call_function(torch.relu_, (env[node.args[0]],))  # type: ignore[index]
            else:
                copy = graph.node_copy(node, lambda a: env[a])
            if copy.op == "call_module":
                attributes[str(node.target)] = self.gm.get_submodule(str(node.target))
            elif node.op == "get_attr":
                attributes[str(node.target)] = attribute(self.gm, str(node.target))
            if node in modulated:
                name = f"bioattn_modulation_{len(hooks)}"
                module = _RowModulation()
                attributes[name] = module
                hooks.append((module, modulated[node]))
                copy = graph.call_module(name, (copy,))
            env[node] = copy
        results = [env[node] for node in outputs]
        if flatten:
            results[0] = graph.call_function(torch.flatten, (results[0], 1))
        graph.output(results[0] if len(results) == 1 else tuple(results))
        return _Tail(fx.GraphModule(attributes, graph), hooks)

    def _fusable_relu(self, node: fx.Node, computed: set[fx.Node]) -> bool:
        """A ReLU module call whose input is computed in the same graph and used only by it."""
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            return False
        if not isinstance(self.gm.get_submodule(str(node.target)), nn.ReLU):
            return False
        source = node.args[0]
        return isinstance(source, fx.Node) and source in computed and len(source.users) == 1

    def plan(self, layers: Sequence[LayerInfo], probed: Sequence[LayerInfo] = ()) -> _Plan:
        """Head and tail for attention at ``layers`` (split at the earliest of them).

        With ``probed`` layers the tail also returns, after the features, the (modulated)
        activity of those after the split (in their order); such a tail applies no in-place
        ReLUs. Probed layers before the split are left out (attention does not change them).
        """
        modulated: dict[fx.Node, LayerInfo] = {}
        for layer in layers:
            nodes = self.layer_nodes(layer)
            if not nodes:
                raise _SplitError(f"site {layer.name!r} is not in the traced graph")
            modulated.update({node: layer for node in nodes})
        start = min(modulated, key=self.order.__getitem__)
        inner = {node: layer for node, layer in modulated.items() if node is not start}
        boundary = self.boundary(start)
        head = self.extract([self.input], boundary).module
        after: list[LayerInfo] = []
        start_probed = False
        for layer in probed:
            nodes = self.layer_nodes(layer)
            if len(nodes) != 1:
                raise _SplitError(f"probed site {layer.name!r} is {len(nodes)} calls, not one")
            if nodes[0] is start:
                start_probed = True
            elif self.order[nodes[0]] > self.order[start]:
                after.append(layer)
        outputs = [self.readout_input, *(self.layer_nodes(la)[0] for la in after)]
        # (the start rows are a placeholder, which no in-place ReLU writes to)
        tail = self.extract(boundary, outputs, inner, flatten=True, inplace_relu=not after)
        reused = len(modulated) > len(layers)
        return _Plan(
            modulated[start], head, len(boundary), tail, reused, tuple(after), start_probed
        )


def _nchw(t: torch.Tensor) -> torch.Tensor:
    """A modulation tensor as (1, a, b, c); the engine needs one shared by every image."""
    shaped = as_nchw(t)
    if shaped.ndim == 4 and shaped.shape[0] == 1:
        return shaped
    raise ConfigError(
        f"the sweep engine batches modulations that are the same for every image; got a "
        f"tensor of shape {tuple(t.shape)} (use (C,), (H, W), (C, H, W) or (1, C, H, W))"
    )


def _cue(modulation: Modulation) -> object:
    """The modulation's spatial cue (``None`` without one, or for Modulations that have none)."""
    return getattr(modulation, "spatial", None)


def _full_scale(modulation: Modulation, shape: tuple[int, ...]) -> torch.Tensor | None:
    """The scale a modulation applies to activity of per-image ``shape``, cue included."""
    if _cue(modulation) is None:
        return modulation.scale
    return modulation.full_scale(torch.empty((1, *shape)))


def _stack(tensors: Sequence[torch.Tensor | None]) -> torch.Tensor | None:
    """Stack per-condition modulation tensors into (M, a, b, c) float32, or None."""
    if tensors[0] is None:
        return None
    shaped = [_nchw(t).to(torch.float32) for t in tensors if t is not None]
    shape = torch.broadcast_shapes(*(t.shape for t in shaped))
    return torch.cat([t.expand(shape) for t in shaped])


def _nbytes(value: object) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, (tuple, list)):
        return sum(_nbytes(v) for v in value)
    return 0


class _PeakProbe(fx.Interpreter):
    """Runs a graph and estimates its peak live activity, freeing values after their last use."""

    def run(self, *args: object, **kwargs: object) -> object:  # type: ignore[override]
        self.sizes: dict[fx.Node, int] = {}
        return super().run(*args, **kwargs)

    def run_node(self, n: fx.Node) -> object:
        out = super().run_node(n)
        if n.op != "get_attr":
            self.sizes[n] = _nbytes(out)
        return out

    def peak(self) -> int:
        nodes = list(self.module.graph.nodes)
        last_use = {a: i for i, node in enumerate(nodes) for a in node.all_input_nodes}
        live = peak = 0
        for i, node in enumerate(nodes):
            live += self.sizes.get(node, 0)
            peak = max(peak, live)
            for a in node.all_input_nodes:
                if last_use.get(a) == i:
                    live -= self.sizes.get(a, 0)
        return peak


class _Reader:
    """Writes a probe's readings of the layers a tail reads into (M, N, …) buffers.

    The buffers start as the unattended readings; per chunk, the readings of the layers at and
    after the split (a sub-probe of those layers) overwrite their parts: their columns of the
    unit-concatenated keys (``mean``, ``quadrant``) and their ``maps_<alias>`` entries.
    """

    def __init__(
        self,
        probe: ProbeLike,
        plan: _Plan,
        buffers: dict[str, torch.Tensor],
        index: torch.Tensor,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> None:
        split = {la.alias for la in plan.probed}
        if plan.start_probed:
            split.add(plan.start_layer.alias)
        means = tuple(la for la in probe.layers if la.alias in split)
        maps = tuple(la for la in probe.full_maps if la.alias in split)
        self.buffers = buffers
        self.index = index  # rows of the buffers for this group's conditions
        self.has_means = bool(means)
        self.probe: ProbeLike | None = None
        if means == tuple(probe.layers) and maps == tuple(probe.full_maps):
            self.probe = probe
        elif means or maps:
            if not is_dataclass(probe) or isinstance(probe, type):
                raise _SplitError("the probe is not a dataclass, so it cannot be split by layer")
            self.probe = replace(probe, layers=means or maps, full_maps=maps)  # type: ignore[type-var]
        # (buffer columns, sub-probe columns) of each run of split layers in probe.layers
        self.columns: list[tuple[slice, slice]] = []
        total = width = 0
        for layer in probe.layers:
            units = shapes[layer.alias][0]
            if layer.alias in split:
                start = total
                if self.columns and self.columns[-1][0].stop == total:  # extend the last run
                    start = self.columns.pop()[0].start
                self.columns.append(
                    (slice(start, total + units), slice(start - total + width, width + units))
                )
                width += units
            total += units
        self.width = width
        #: Bytes per row of the full maps a chunk's readings copy.
        self.row_bytes = sum(4 * int(torch.Size(shapes[la.alias]).numel()) for la in maps)

    def read(
        self,
        plan: _Plan,
        out: torch.Tensor | tuple[torch.Tensor, ...],
        start_rows: torch.Tensor,
        m0: int,
        m1: int,
        n0: int,
        n1: int,
    ) -> torch.Tensor:
        """Store the readings of one chunk (conditions m0..m1 × images n0..n1) from the tail's
        outputs ``out`` and the modulated ``start_rows``; return the readout features."""
        if plan.probed:
            features, *values = out
        else:
            features, values = out, []
        assert isinstance(features, torch.Tensor)
        if self.probe is None:
            return features
        activity = {la.alias: v for la, v in zip(plan.probed, values, strict=True)}
        if plan.start_probed:
            activity[plan.start_layer.alias] = start_rows
        rows = self.index[m0:m1]
        for key, value in self.probe.reduce(activity).items():
            value = value.reshape(m1 - m0, n1 - n0, *value.shape[1:])
            target = self.buffers.get(key)
            if target is None:
                raise _SplitError(f"the probe's reading {key!r} is not in its unattended readings")
            if key.startswith("maps_"):
                target[rows, n0:n1] = value
            elif self.has_means:
                if value.ndim < 3 or value.shape[2] != self.width:
                    raise _SplitError(f"the probe's reading {key!r} is not per unit")
                for columns, part in self.columns:
                    target[rows, n0:n1, columns] = value[:, :, part]
        return features


class SweepEngine:
    """Detector logits for many attention conditions on one task set, computed efficiently.

    Parameters
    ----------
    network, detectors:
        The model and its detectors (as for :func:`target_logits`).
    memory_budget:
        Hard cap in bytes on the activity one chunk of conditions and its cached image block
        may hold (exceeded only when a single row needs more). ``None``: 512 MiB, or a quarter
        of the memory available now if that is less.
    chunk_bytes:
        Live activity a chunk aims for (speed: near the CPU caches); capped by
        ``memory_budget``.
    batch_size:
        Images per forward pass for the unmodulated baseline and the naive fallback.
    channels_last:
        Run the tails in channels-last layout.
    keep_activity:
        Let :meth:`baseline_logits` keep every layer's activity for the conditions that follow
        on the same task set (otherwise each (task set, layer) runs its own head pass).
        ``channels_last`` and ``keep_activity`` can be switched off to measure their effect.
    """

    def __init__(
        self,
        network: Network,
        detectors: Detectors,
        memory_budget: int | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        batch_size: int = 256,
        channels_last: bool = True,
        keep_activity: bool = True,
    ) -> None:
        if memory_budget is None:
            available = available_memory()
            memory_budget = DEFAULT_MEMORY_BUDGET
            if available is not None:
                memory_budget = max(64 * 2**20, min(memory_budget, available // 4))
        if memory_budget < 1 or chunk_bytes < 1 or batch_size < 1:
            raise ConfigError(
                f"memory_budget, chunk_bytes and batch_size must be positive, got "
                f"{memory_budget}, {chunk_bytes} and {batch_size}"
            )
        self.network = network
        self.detectors = detectors
        self.memory_budget = int(memory_budget)
        self.chunk_bytes = int(min(chunk_bytes, memory_budget))
        self.batch_size = batch_size
        self.channels_last = channels_last
        self.keep_activity = keep_activity
        self._plans: dict[tuple, _Plan | None] = {}
        self._sizes: dict[tuple, tuple[int, int]] = {}
        self._shapes: dict[tuple, dict[str, tuple[int, ...]]] = {}
        self._activity: tuple[weakref.ref, dict[str, torch.Tensor]] | None = None
        # the unattended logits and readings of the last (task, probe) read
        self._unattended: (
            tuple[weakref.ref, ProbeLike, torch.Tensor, dict[str, torch.Tensor]] | None
        ) = None
        #: Work done so far, for benchmarks: images through full forward passes
        #: (``("full", "", image shape)``) and through heads (``("head", start layer alias,
        #: image shape)``), rows (condition × image) through tails (``("tail", ...)``).
        self.work: Counter[tuple[str, str, tuple[int, ...]]] = Counter()
        try:
            self._splitter: _Splitter | None = _Splitter(network)
        except Exception as error:  # any tracing failure means: use the naive path
            self._splitter = None
            self._warn(f"torch.fx cannot split this model ({type(error).__name__}: {error})")

    @property
    def supported(self) -> bool:
        """Whether the model could be traced (otherwise every call runs the naive path)."""
        return self._splitter is not None

    def _warn(self, reason: str) -> None:
        key = type(self.network.module).__qualname__
        if key not in _warned_models:
            _warned_models.add(key)
            warnings.warn(
                f"sweep engine: {reason}; using one full forward pass per condition instead",
                stacklevel=3,
            )

    def baseline_logits(self, task: TaskSet) -> torch.Tensor:
        """Target logits (N,) of the unmodulated network (the naive computation).

        The same forward pass keeps every attended layer's activity for ``task`` (when it fits
        in half the memory budget), so that the conditions evaluated next on this task start
        from it and need no head pass of their own: then the whole sweep of one image set costs
        one full forward pass plus the tails.
        """
        images = task.images
        n = images.shape[0]
        self._activity = None
        per_image = sum(
            int(torch.Size(shape).numel()) * 4 for shape in self._activity_shapes(images).values()
        )
        self.work["full", "", tuple(images.shape[1:])] += n
        if (
            not self.keep_activity
            or self._splitter is None
            or n * per_image > self.memory_budget // 2
        ):
            return target_logits(self.network, self.detectors, task, batch_size=self.batch_size)
        layers = self.network.layers
        kept: dict[str, list[torch.Tensor]] = {layer.alias: [] for layer in layers}
        features = []
        with (
            torch.no_grad(),
            capture_activity(self.network, layers) as store,
            self.network.capture_readout() as readout,
        ):
            for start in range(0, n, self.batch_size):
                self.network(self.network.preprocess(images[start : start + self.batch_size]))
                features.append(readout.pop())
                for alias, chunks in kept.items():
                    if alias in store:
                        chunks.append(self._copy(store.pop(alias)))
            logits = self.detectors.logits(torch.cat(features))[
                :, self.detectors.index(task.target_name)
            ]
        self._activity = (
            weakref.ref(task),
            {alias: torch.cat(chunks) for alias, chunks in kept.items() if chunks},
        )
        return logits

    def _copy(self, x: torch.Tensor) -> torch.Tensor:
        """A copy of activity for later use, in the tails' layout."""
        if self.channels_last and x.ndim == 4:
            return x.clone(memory_format=torch.channels_last)
        return x.clone()

    def _cached_activity(self, task: TaskSet, plan: _Plan) -> torch.Tensor | None:
        """The start activity of ``plan`` kept by :meth:`baseline_logits` for ``task``, if any."""
        if self._activity is None or plan.n_boundary != 1 or plan.reused:
            return None
        ref, activity = self._activity
        if ref() is not task:
            return None
        return activity.get(plan.start_layer.alias)

    def condition_logits(
        self, task: TaskSet, conditions: Sequence[Mapping[LayerInfo | str | int, Modulation]]
    ) -> torch.Tensor:
        """Target logits (M, N) of ``task``'s images under each of M conditions.

        A condition maps layers (LayerInfo, path, alias or number) to a :class:`Modulation`
        that is the same for every image ((C,) feature gains, (H, W) maps, spatial cues, response
        shifts). Conditions may modulate different layers; they are grouped internally and the
        rows come back in the order given.
        """
        n = task.images.shape[0]
        out = torch.empty(len(conditions), n)
        resolved, groups = self._group(conditions)
        for key, indices in groups.items():
            if not key:
                out[indices] = self.baseline_logits(task).unsqueeze(0).expand(len(indices), n)
            else:
                out[indices] = self._run_group(task, [resolved[i] for i in indices])
        return out

    def condition_readings(
        self,
        task: TaskSet,
        conditions: Sequence[Mapping[LayerInfo | str | int, Modulation]],
        probe: ProbeLike,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Target logits (M, N) and ``probe``'s readings (M, N, …) under each of M conditions.

        Logits are those of :meth:`condition_logits`; readings are ``probe.reduce`` of each
        probed layer's activity as the network goes on to use it (modulated where attention
        acts), as one full hooked pass per condition gives them
        (:class:`bioattn.experiments.evaluate.ModulationEvaluator` without an engine). Layers
        before a condition's earliest attended layer are unchanged by it: their readings come
        from one unattended pass per (task, probe), which also keeps every layer's activity (as
        :meth:`baseline_logits` does) and gives the rows of empty conditions. The other layers
        are read from the tails. Where the network cannot be split (or a probed or attended
        activation module is called more than once) conditions run one full pass each.
        """
        n = task.images.shape[0]
        logits = torch.empty(len(conditions), n)
        if not conditions:
            return logits, {}
        resolved, groups = self._group(conditions)
        base_logits, base = self._unattended_readings(task, probe)
        m = len(conditions)
        readings = {k: v.unsqueeze(0).expand(m, *v.shape).clone() for k, v in base.items()}
        for key, indices in groups.items():
            if not key:
                logits[indices] = base_logits
            else:
                group = [resolved[i] for i in indices]
                self._read_group(task, group, torch.tensor(indices), probe, logits, readings)
        return logits, readings

    def _group(
        self, conditions: Sequence[Mapping[LayerInfo | str | int, Modulation]]
    ) -> tuple[list[dict[LayerInfo, Modulation]], dict[tuple, list[int]]]:
        """Conditions with resolved layers, and the indices of each group of conditions with the
        same layers and modulation structure (the empty key: unattended conditions)."""
        groups: dict[tuple, list[int]] = {}
        resolved: list[dict[LayerInfo, Modulation]] = []
        for i, condition in enumerate(conditions):
            mods: dict[LayerInfo, Modulation] = {}
            for spec, modulation in condition.items():
                if not isinstance(modulation, Modulation):
                    raise ConfigError(
                        f"expected a Modulation for layer {spec!r}, got {modulation!r}"
                    )
                mods[self.network.resolve_layer(spec)] = modulation
            resolved.append(mods)
            key = tuple(
                sorted(
                    (la.name, m.scale is None and _cue(m) is None, m.shift is None)
                    for la, m in mods.items()
                )
            )
            groups.setdefault(key, []).append(i)
        return resolved, groups

    # --- one group of conditions with the same layers and modulation structure ------------
    @staticmethod
    def _plan_key(layers: Sequence[LayerInfo], probed: Sequence[LayerInfo] = ()) -> tuple:
        key: tuple = tuple(sorted(layer.name for layer in layers))  # names: groups too
        if probed:
            key = (key, tuple(layer.name for layer in probed))
        return key

    def _plan(self, layers: Sequence[LayerInfo], probed: Sequence[LayerInfo] = ()) -> _Plan | None:
        """The (cached) plan for attention at ``layers``, reading ``probed`` layers; None where
        the network cannot be split."""
        key = self._plan_key(layers, probed)
        if key not in self._plans:
            plan = None
            if self._splitter is not None:
                try:
                    plan = self._splitter.plan(layers, probed)
                except _SplitError as error:
                    self._warn(f"cannot split at {[la.alias for la in layers]} ({error})")
            self._plans[key] = plan
        return self._plans[key]

    def _run_group(
        self, task: TaskSet, conditions: list[dict[LayerInfo, Modulation]]
    ) -> torch.Tensor:
        layers = sorted(conditions[0], key=lambda la: la.number)
        plan = self._plan(layers)
        cued = any(_cue(c[la]) is not None for c in conditions for la in layers)
        if plan is not None and cued and plan.reused:
            plan = None  # a spatial cue's map follows the grid of each call of the module
        if plan is not None:
            scales, shifts = self._stacks(task, layers, conditions)
            try:
                with torch.no_grad():
                    return self._run(task, plan, scales, shifts, len(conditions))
            except _SplitError as error:
                self._warn(f"cannot split at {[la.alias for la in layers]} ({error})")
                self._plans[self._plan_key(layers)] = None
        self.work["full", "", tuple(task.images.shape[1:])] += len(conditions) * len(task.images)
        return naive_condition_logits(
            self.network, self.detectors, task, conditions, self.batch_size
        )

    def _stacks(
        self,
        task: TaskSet,
        layers: Sequence[LayerInfo],
        conditions: Sequence[Mapping[LayerInfo, Modulation]],
    ) -> tuple[dict[LayerInfo, torch.Tensor | None], dict[LayerInfo, torch.Tensor | None]]:
        """Per-layer scales and shifts of the conditions, stacked (M, a, b, c) (cues included)."""
        shapes = self._activity_shapes(task.images)
        scales = {
            la: _stack(
                [_full_scale(c[la], shapes.get(la.alias, (la.channels, 1, 1))) for c in conditions]
            )
            for la in layers
        }
        shifts = {la: _stack([c[la].shift for c in conditions]) for la in layers}
        return scales, shifts

    # --- readings --------------------------------------------------------------------------
    def _read_group(
        self,
        task: TaskSet,
        conditions: list[dict[LayerInfo, Modulation]],
        index: torch.Tensor,
        probe: ProbeLike,
        logits: torch.Tensor,
        readings: dict[str, torch.Tensor],
    ) -> None:
        """Logits and readings of one group of conditions, written at rows ``index``."""
        layers = sorted(conditions[0], key=lambda la: la.number)
        probed = list(probe.hooked)
        plan = self._plan(layers, probed)
        if plan is not None and plan.reused:
            self._warn(f"cannot read layers with attention at reused {[la.alias for la in layers]}")
            plan = None
        if plan is not None:
            scales, shifts = self._stacks(task, layers, conditions)
            try:
                reader = _Reader(probe, plan, readings, index, self._activity_shapes(task.images))
                with torch.no_grad():
                    logits[index] = self._run(task, plan, scales, shifts, len(conditions), reader)
                return
            except _SplitError as error:
                self._warn(f"cannot read layers split at {[la.alias for la in layers]} ({error})")
                self._plans[self._plan_key(layers, probed)] = None
        for i, condition in zip(index.tolist(), conditions, strict=True):
            logits[i], row = self._full_pass(task, condition, probe)
            for key, value in row.items():
                readings[key][i] = value

    def _unattended_readings(
        self, task: TaskSet, probe: ProbeLike
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N,) and readings (N, …) of the unattended network, cached per (task, probe).

        The pass also keeps every layer's activity for the tails, as :meth:`baseline_logits`
        does (when it fits in half the memory budget).
        """
        if self._unattended is not None:
            ref, cached_probe, logits, readings = self._unattended
            if ref() is task and cached_probe == probe:
                return logits, readings
        self._unattended = None
        self._activity = None
        images = task.images
        per_image = sum(
            int(torch.Size(shape).numel()) * 4 for shape in self._activity_shapes(images).values()
        )
        keep = (
            self.keep_activity
            and self._splitter is not None
            and images.shape[0] * per_image <= self.memory_budget // 2
        )
        logits, readings = self._full_pass(task, {}, probe, keep=keep)
        self._unattended = (weakref.ref(task), probe, logits, readings)
        return logits, readings

    def _full_pass(
        self,
        task: TaskSet,
        modulations: Mapping[LayerInfo, Modulation],
        probe: ProbeLike,
        keep: bool = False,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits (N,) and readings (N, …) of one full hooked pass per batch (the reference
        computation); with ``keep``, every layer's activity is kept for ``task`` as well."""
        images = task.images
        n = images.shape[0]
        self.work["full", "", tuple(images.shape[1:])] += n
        layers = list(dict.fromkeys([*probe.hooked, *(self.network.layers if keep else [])]))
        kept: dict[str, list[torch.Tensor]] = (
            {layer.alias: [] for layer in self.network.layers} if keep else {}
        )
        features: list[torch.Tensor] = []
        batches: list[dict[str, torch.Tensor]] = []
        with ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(modulate(self.network, modulations))  # before the capture hooks
            store = stack.enter_context(capture_activity(self.network, layers))
            readout = stack.enter_context(self.network.capture_readout())
            for start in range(0, n, self.batch_size):
                self.network(self.network.preprocess(images[start : start + self.batch_size]))
                features.append(readout.pop())
                batches.append(probe.reduce(store))
                for alias, chunks in kept.items():
                    if alias in store:
                        chunks.append(self._copy(store[alias]))
            if features:
                target = self.detectors.index(task.target_name)
                logits = self.detectors.logits(torch.cat(features))[:, target]
            else:
                logits = torch.empty(0)
        if keep:
            self._activity = (
                weakref.ref(task),
                {alias: torch.cat(chunks) for alias, chunks in kept.items() if chunks},
            )
        readings = {k: torch.cat([b[k] for b in batches]) for k in batches[0]} if batches else {}
        return logits, readings

    def _activity_shapes(self, images: torch.Tensor) -> dict[str, tuple[int, ...]]:
        """(C, H, W) of every layer's activity for images of this size (one-image probe)."""
        key = tuple(images.shape[1:])
        if key not in self._shapes:
            with torch.no_grad(), capture_activity(self.network, self.network.layers) as store:
                self.network(self.network.preprocess(images[:1]))
            self._shapes[key] = {
                layer.alias: tuple(store[layer.alias].shape[1:])
                if layer.alias in store
                else (layer.channels, 1, 1)
                for layer in self.network.layers
            }
        return self._shapes[key]

    def _layout(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.ndim == 4:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    def _blocks(self, n: int, m: int, per_image: int, per_row: int) -> tuple[int, int]:
        """Images per block and conditions per chunk.

        A chunk is ``chunk`` conditions × ``block`` images. Conditions come first (a block's
        head runs once for all of them); the chunk aims at ``chunk_bytes`` of live activity
        (the block's cached activity included) and stays under ``memory_budget`` unless a
        single row needs more.
        """
        per_row = max(1, per_row)
        chunk = max(1, min(m, self.chunk_bytes // per_row))
        block = max(1, min(n, self.chunk_bytes // (per_image + chunk * per_row)))
        if block * (per_image + chunk * per_row) > self.memory_budget:
            chunk = max(1, min(chunk, (self.memory_budget - per_image) // per_row))
        return block, chunk

    @staticmethod
    def _rows(stack: torch.Tensor | None, m0: int, m1: int, block: int) -> torch.Tensor | None:
        """Per-row modulation tensors (R, a, b, c) for conditions m0..m1 × ``block`` images."""
        if stack is None:
            return None
        return stack[m0:m1].repeat_interleave(block, dim=0)

    def _set_rows(
        self,
        tail: _Tail,
        scales: Mapping[LayerInfo, torch.Tensor | None],
        shifts: Mapping[LayerInfo, torch.Tensor | None],
        m0: int,
        m1: int,
        block: int,
    ) -> None:
        for module, layer in tail.modulations:
            module.scale = self._rows(scales[layer], m0, m1, block)
            module.shift = self._rows(shifts[layer], m0, m1, block)

    def _start_rows(
        self,
        activity: torch.Tensor,
        scale: torch.Tensor | None,
        shift: torch.Tensor | None,
        m0: int,
        m1: int,
    ) -> torch.Tensor:
        """Modulated activity of conditions m0..m1 on a block, as (chunk·block, C, H, W) rows.

        The same arithmetic as :class:`Modulation` (``r * scale``, then ``clamp(r + shift, 0)``),
        done in the activity's memory layout so that the result needs no further copy.
        """
        if activity.ndim != 4:
            raise _SplitError(f"attended activity has shape {tuple(activity.shape)}, not 4-D")
        nhwc = self.channels_last and activity.is_contiguous(memory_format=torch.channels_last)
        perm = (0, 2, 3, 1) if nhwc else (0, 1, 2, 3)
        x = activity.permute(perm).unsqueeze(0)
        if scale is not None:
            x = x * scale[m0:m1].permute(perm).unsqueeze(1)
        if shift is not None:
            x = torch.clamp(x + shift[m0:m1].permute(perm).unsqueeze(1), min=0.0)
        x = x.expand(m1 - m0, *x.shape[1:]).reshape(-1, *x.shape[2:])
        return x.permute(0, 3, 1, 2) if nhwc else x

    def _repeat(self, value: torch.Tensor, chunk: int) -> torch.Tensor:
        """An unmodulated boundary tensor (a skip connection) repeated for ``chunk`` conditions."""
        rows = value.unsqueeze(0).expand(chunk, *value.shape).reshape(-1, *value.shape[1:])
        return self._layout(rows)

    def _head(self, plan: _Plan, images: torch.Tensor) -> list[torch.Tensor]:
        """The boundary tensors of ``images`` (start activity first), in the tail's layout."""
        out = plan.head(self.network.preprocess(images))
        values = list(out) if isinstance(out, (tuple, list)) else [out]
        if len(values) != plan.n_boundary or any(
            not isinstance(v, torch.Tensor) or v.ndim == 0 or v.shape[0] != images.shape[0]
            for v in values
        ):
            raise _SplitError("values crossing the split are not per-image tensors")
        return [self._layout(v) for v in values]

    def _run(
        self,
        task: TaskSet,
        plan: _Plan,
        scales: Mapping[LayerInfo, torch.Tensor | None],
        shifts: Mapping[LayerInfo, torch.Tensor | None],
        m: int,
        reader: _Reader | None = None,
    ) -> torch.Tensor:
        """Logits (m, N): the start activity (kept from the baseline pass, else a head pass per
        image block), then the tail once per chunk of conditions (with a ``reader``, which
        stores each chunk's readings, for a plan with probed layers)."""
        images = task.images
        n = images.shape[0]
        target = self.detectors.index(task.target_name)
        device = self.network.device
        scales = {la: None if s is None else s.to(device) for la, s in scales.items()}
        shifts = {la: None if s is None else s.to(device) for la, s in shifts.items()}
        scale, shift = scales[plan.start_layer], shifts[plan.start_layer]
        out = torch.empty(m, n)
        shape = tuple(images.shape[1:])
        key = (id(plan), shape)
        try:
            cached = self._cached_activity(task, plan)
            if key not in self._sizes:
                # One image under one condition: the memory per cached image and per row.
                sample = [cached[:1]] if cached is not None else self._head(plan, images[:1])
                self._set_rows(plan.tail, scales, shifts, 0, 1, 1)
                probe = _PeakProbe(plan.tail.module)
                probe.run(self._start_rows(sample[0], scale, shift, 0, 1), *sample[1:])
                self._sizes[key] = (sum(_nbytes(v) for v in sample), probe.peak())
            per_image, per_row = self._sizes[key]
            if reader is not None:
                per_row += reader.row_bytes
            block, chunk = self._blocks(n, m, 0 if cached is not None else per_image, per_row)
            for n0 in range(0, n, block):
                n1 = min(n, n0 + block)
                if cached is not None:
                    activity, extras = cached[n0:n1], []
                else:
                    activity, *extras = self._head(plan, images[n0:n1])
                    self.work["head", plan.start_layer.alias, shape] += n1 - n0
                for m0 in range(0, m, chunk):
                    m1 = min(m, m0 + chunk)
                    rows = [self._start_rows(activity, scale, shift, m0, m1)]
                    rows += [self._repeat(extra, m1 - m0) for extra in extras]
                    self._set_rows(plan.tail, scales, shifts, m0, m1, n1 - n0)
                    features = plan.tail.module(*rows)
                    if reader is not None:
                        features = reader.read(plan, features, rows[0], m0, m1, n0, n1)
                    self.work["tail", plan.start_layer.alias, shape] += rows[0].shape[0]
                    logits = self.detectors.logits(features)[:, target]
                    out[m0:m1, n0:n1] = logits.view(m1 - m0, n1 - n0)
        finally:
            for module, _layer in plan.tail.modulations:  # do not keep per-row tensors alive
                module.scale = module.shift = None
        return out
