"""Attention sites: the call sites of activation functions in a network's traced graph.

Attention scales the *output of an activation* (after the nonlinearity, before any pooling).
A site is one call of an activation in one forward pass, found on the graph ``torch.fx`` traces
from the model, not on module objects:

* a module called twice (torchvision's ResNet blocks call one ``relu`` after ``bn1`` and after the
  residual sum) gives two sites, ``layer1.0.relu:0`` and ``layer1.0.relu:1``; a module called once
  is named by its dotted path (``features.1``);
* functional activations count (``F.relu(x)``, ``torch.relu(x)``, ``x.relu()``); they are named by
  the module whose ``forward`` calls them and the function, ``block.relu`` (``relu`` at the top
  level), with ``:k`` when that module calls it several times;
* the activation kinds are ReLU, ReLU6, LeakyReLU, GELU, SiLU and ELU (modules or functions);
* only calls whose output is a stack of feature maps (N, C, H, W) are sites: the ReLUs of an
  MLP head are not.

A module that several sites call (CORnet-S applies the same ``conv``/``nonlin`` modules at each
recurrent time step) also has a *group site* ``<path>:*`` that attends all of its calls at once
with one gain per map, as a top-down signal that is constant over time would. Groups are not
numbered layers (an all-layers sweep attends each call once); name them explicitly.

Models ``torch.fx`` cannot trace (data-dependent control flow in ``forward``) fall back to forward
hooks on activation modules, with a warning: then functional activations are invisible, and a
module called more than once is refused (a hook cannot tell its calls apart, and attending
every call silently is what this design exists to avoid). A submodule with data-dependent control
flow of its own can be kept out of tracing by giving its class ``bioattn_leaf = True`` (the SSN
layers do).
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import fx, nn

from bioattn.errors import LayerError

#: Activation modules and the kind each is listed as.
ACTIVATION_MODULES: tuple[tuple[type[nn.Module], str], ...] = (
    (nn.ReLU, "ReLU"),
    (nn.ReLU6, "ReLU6"),
    (nn.LeakyReLU, "LeakyReLU"),
    (nn.GELU, "GELU"),
    (nn.SiLU, "SiLU"),
    (nn.ELU, "ELU"),
)
#: Activation functions (``call_function`` targets) and their kinds.
ACTIVATION_FUNCTIONS: dict[Callable[..., object], str] = {
    F.relu: "ReLU",
    F.relu_: "ReLU",
    torch.relu: "ReLU",
    torch.relu_: "ReLU",
    F.relu6: "ReLU6",
    F.leaky_relu: "LeakyReLU",
    F.leaky_relu_: "LeakyReLU",
    F.gelu: "GELU",
    F.silu: "SiLU",
    F.elu: "ELU",
    F.elu_: "ELU",
}
#: Activation methods (``call_method`` targets, ``x.relu()``) and their kinds.
ACTIVATION_METHODS: dict[str, str] = {"relu": "ReLU", "relu_": "ReLU"}
_CONVS = (F.conv2d, torch.conv2d)
_POOL_MODULES = (nn.MaxPool2d, nn.AvgPool2d)
_POOL_FUNCTIONS = (F.max_pool2d, F.avg_pool2d, torch.max_pool2d)
#: Square input sides tried, in order, to run a model once when it declares no input size.
PROBE_SIZES = (64, 32, 28, 224, 96, 56, 128)
#: Suffix of a group site (all calls of one module).
GROUP_SUFFIX = ":*"


def _ends_block(module: nn.Module) -> bool:
    """Whether ``module`` ends a block for the VGG aliases: a pooling layer, or a module that
    declares ``bioattn_block_boundary`` (a block that does not pool)."""
    return isinstance(module, _POOL_MODULES) or bool(
        getattr(module, "bioattn_block_boundary", False)
    )


def activation_kind(module: nn.Module) -> str | None:
    """The kind of an activation module (``"ReLU"``, ``"GELU"``, ...), or None.

    A module class may declare itself an activation with ``bioattn_activation_kind`` (the SSN
    block does: it replaces a ReLU and keeps its site name); such a module is also a leaf.
    """
    declared = getattr(module, "bioattn_activation_kind", None)
    if declared:
        return str(declared)
    for cls, kind in ACTIVATION_MODULES:
        if isinstance(module, cls):
            return kind
    return None


@dataclass(frozen=True)
class LayerInfo:
    """One attention site (a call of an activation), or a group of a module's calls.

    ``alias`` is the label tables and values files use: the VGG-style ``conv<block>_<k>`` for
    plain conv → activation chains (VGG-16, AlexNet, CORnet-Z, the embedded networks; blocks
    counted by pooling layers and modules declaring ``bioattn_block_boundary``), otherwise the
    site name.
    """

    number: int  # 1-based position among the sites in network order; 0 for a group
    name: str  # site name: "features.1", "layer1.0.relu:1", "block.relu", "V4.nonlin1:*"
    alias: str  # label in tables, e.g. "conv1_1" (or the site name)
    activation: str  # dotted path of the activation module ("" for a functional activation)
    channels: int  # number of feature maps
    call: int = 0  # which call of that module or function (0-based); -1 for a group
    kind: str = "ReLU"  # activation kind
    conv: str = ""  # dotted path of the conv that feeds it (through norms etc.), if one does
    nodes: tuple[str, ...] = ()  # node names in the traced graph (empty: module hooks)
    size: tuple[int, int] | None = None  # spatial size of its maps at the probe input
    members: tuple[str, ...] = ()  # a group's sites (aliases), in call order

    @property
    def is_group(self) -> bool:
        """Whether this attends several calls of one module at once."""
        return bool(self.members)


class SiteHooks(nn.Module):
    """Identity after one site in the hooked graph; applies the transforms registered on it.

    Each transform gets the activity and returns a replacement or None (to only read it); they
    run in registration order, so modulations registered before readers are what readers see.
    """

    def __init__(self) -> None:
        super().__init__()
        self.transforms: dict[int, Callable[[torch.Tensor], torch.Tensor | None]] = {}
        self._next = 0

    def add(self, transform: Callable[[torch.Tensor], torch.Tensor | None]) -> Callable[[], None]:
        """Register ``transform``; returns the function that removes it."""
        key = self._next
        self._next += 1
        self.transforms[key] = transform

        def remove() -> None:
            self.transforms.pop(key, None)

        return remove

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for transform in list(self.transforms.values()):
            out = transform(x)
            if out is not None:
                x = out
        return x


class _Tracer(fx.Tracer):
    """fx's tracer with the readout and modules marked ``bioattn_leaf`` kept as leaves."""

    def __init__(self, leaves: Iterable[str]) -> None:
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            module_qualified_name in self.leaves
            or bool(getattr(m, "bioattn_leaf", False))
            or bool(getattr(m, "bioattn_activation_kind", None))
            or super().is_leaf_module(m, module_qualified_name)
        )


def trace(module: nn.Module, readout: str) -> fx.GraphModule:
    """The model as a GraphModule sharing its submodules (raises whatever fx raises)."""
    tracer = _Tracer({readout})
    graph = tracer.trace(module)
    return fx.GraphModule(tracer.root, graph)


@dataclass
class _Candidate:
    node: str
    scope: str  # module path (call_module) or enclosing module path (functional)
    function: str  # "" for modules, else the function's name
    kind: str
    conv: str
    block: int  # block ends (pooling layers, block boundaries) before it, for VGG aliases
    shape: tuple[int, ...] = ()


def _scope(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    path = last[0] if isinstance(last, tuple) else str(last)
    return str(path)


def _feeding_conv(gm: fx.GraphModule, node: fx.Node) -> str:
    """The conv whose output reaches ``node`` through single-input steps (norms, SSN, pooling)."""
    current = node.args[0] if node.args else None
    for _ in range(16):
        if not isinstance(current, fx.Node):
            return ""
        if current.op == "call_module":
            module = gm.get_submodule(str(current.target))
            if isinstance(module, nn.Conv2d):
                return str(current.target)
        elif current.op not in ("call_function", "call_method") or current.target in _CONVS:
            return ""  # an input, or a functional conv (which has no module path)
        inputs = [a for a in current.all_input_nodes if a.op != "get_attr"]
        if len(inputs) != 1:
            return ""
        current = inputs[0]
    return ""


def _candidates(gm: fx.GraphModule) -> list[_Candidate]:
    found: list[_Candidate] = []
    block, since_pool = 1, 0
    for node in gm.graph.nodes:
        kind, scope, function = None, "", ""
        if node.op == "call_module":
            module = gm.get_submodule(str(node.target))
            if _ends_block(module):
                if since_pool:
                    block, since_pool = block + 1, 0
                continue
            kind, scope = activation_kind(module), str(node.target)
        elif node.op == "call_function":
            if node.target in _POOL_FUNCTIONS:
                if since_pool:
                    block, since_pool = block + 1, 0
                continue
            kind = ACTIVATION_FUNCTIONS.get(node.target)  # type: ignore[arg-type]
            function = getattr(node.target, "__name__", "act").rstrip("_")
            scope = _scope(node)
        elif node.op == "call_method":
            kind = ACTIVATION_METHODS.get(str(node.target))
            function, scope = str(node.target).rstrip("_"), _scope(node)
        if kind is None:
            continue
        since_pool += 1
        found.append(_Candidate(node.name, scope, function, kind, _feeding_conv(gm, node), block))
    return found


def attribute(module: nn.Module, target: str) -> object:
    """The submodule, parameter or buffer at dotted ``target``."""
    value: object = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def hooked_graph(
    gm: fx.GraphModule, nodes: Sequence[str]
) -> tuple[fx.GraphModule, dict[str, SiteHooks]]:
    """A copy of ``gm`` with a :class:`SiteHooks` after each of ``nodes`` (same submodules);
    returns it and the hooks by node name."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    hooks: dict[str, SiteHooks] = {}
    wanted = set(nodes)
    for node in gm.graph.nodes:
        copy = graph.node_copy(node, lambda a: env[a])
        if node.name in wanted:
            hooks[node.name] = SiteHooks()
            copy = graph.call_module(f"bioattn_site_{len(hooks) - 1}", (copy,))
        env[node] = copy
    sites = {f"bioattn_site_{i}": hook for i, hook in enumerate(hooks.values())}
    attributes = {
        str(node.target): sites.get(str(node.target)) or attribute(gm, str(node.target))
        for node in graph.nodes
        if node.op in ("call_module", "get_attr")
    }
    return fx.GraphModule(attributes, graph), hooks


def first_conv_channels(module: nn.Module) -> int | None:
    """Input channels of ``module``'s first ``nn.Conv2d`` (in module order), or None."""
    return next((int(m.in_channels) for m in module.modules() if isinstance(m, nn.Conv2d)), None)


def probe_input(
    module: nn.Module, mean: Sequence[float], size: int, pattern: bool = False
) -> torch.Tensor:
    """An image batch (1, C, size, size) for one shape-finding pass: zeros, or with ``pattern``
    a fixed pattern (no RNG used either way)."""
    channels = first_conv_channels(module)
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    shape = (1, channels or len(mean), size, size)
    if not pattern:
        return torch.zeros(shape, device=device)
    ramp = torch.arange(math.prod(shape), dtype=torch.float32, device=device)
    return (0.5 + 0.5 * torch.sin(0.37 * ramp)).reshape(shape)


def _run_probe(
    run: Callable[[torch.Tensor], object],
    module: nn.Module,
    readout: str,
    mean: Sequence[float],
    size: int | None,
    reset: Callable[[], None] = lambda: None,
) -> int:
    """Run the model once at the first probe size it accepts; returns that size. ``reset`` is
    called before each try (what a failed try recorded is discarded).

    Checks that the forward pass calls the readout module (whose input detectors read): the
    model's own output is not used, so it may be anything (a tensor, a tuple, a dict).
    """
    sizes = (size,) if size is not None else PROBE_SIZES
    calls = [0]
    handle = module.get_submodule(readout).register_forward_pre_hook(
        lambda _m, _i: calls.__setitem__(0, calls[0] + 1)
    )
    last: Exception | None = None
    try:
        for side in sizes:
            reset()
            calls[0] = 0
            try:
                with torch.no_grad():
                    run(probe_input(module, mean, side))
            except Exception as error:  # the model rejects this size: try the next
                last = error
                continue
            if calls[0] == 0:
                raise LayerError(
                    f"readout module {readout!r} is never called in the model's forward pass, "
                    "so detectors would see nothing; give the module whose input is the feature "
                    "vector (a user model's bioattn_readout, or readout=...)"
                )
            return side
    finally:
        handle.remove()
    raise LayerError(
        f"cannot run the model once to find its attention sites: every input size tried "
        f"({', '.join(f'{s}x{s}' for s in sizes)}) failed, the last with "
        f"{type(last).__name__}: {last}; give the model its input size (bioattn_input_size = N "
        "in a user model's module)"
    )


def _same_output(gm: fx.GraphModule, module: nn.Module, x: torch.Tensor) -> bool:
    """Whether the traced graph gives the module's output on ``x`` (tensors compared, to float
    rounding: GPU kernels need not be bit-reproducible)."""
    with torch.no_grad():
        traced, direct = gm(x), module(x)
    flat_traced, flat_direct = _tensors(traced), _tensors(direct)
    return len(flat_traced) == len(flat_direct) and all(
        a.shape == b.shape
        and (
            a.is_meta or torch.allclose(a.float(), b.float(), rtol=1e-4, atol=1e-5, equal_nan=True)
        )
        for a, b in zip(flat_traced, flat_direct, strict=True)
    )


def _tensors(value: object) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [t for item in value for t in _tensors(item)]
    return []


@dataclass
class Sites:
    """Every attention site of a model, and how forward passes reach them.

    ``graph`` is the traced model (None for the module-hook fallback); ``hooked`` the same graph
    with a :class:`SiteHooks` after each site; forward passes of a :class:`Network` run
    ``hooked``. ``refused`` maps names of sites that cannot be attended to the reason.
    """

    layers: list[LayerInfo]
    groups: dict[str, LayerInfo]
    graph: fx.GraphModule | None
    hooked: nn.Module
    hooks: dict[str, SiteHooks]  # node name -> the hook module after it (traced)
    probe_size: int
    refused: dict[str, str] = field(default_factory=dict)
    trace_error: str = ""


def _name_sites(
    cands: list[_Candidate], module_paths: Iterable[str] = ()
) -> list[tuple[_Candidate, str, int]]:
    """Name each candidate: module path / function, with ``:k`` where one has several calls.

    A functional call whose name would be a module's path (``self.relu`` beside ``F.relu`` in
    one block) is named with ``()``: ``block.relu()``.
    """
    taken = set(module_paths)
    keys = [(c.scope, c.function) for c in cands]
    totals = Counter(keys)
    seen: Counter[tuple[str, str]] = Counter()
    named = []
    for cand, key in zip(cands, keys, strict=True):
        call = seen[key]
        seen[key] += 1
        base = cand.scope
        if cand.function:
            base = ".".join(p for p in key if p)
            if base in taken:
                base += "()"
        named.append((cand, base if totals[key] == 1 else f"{base}:{call}", call))
    return named


def _aliases(named: list[tuple[_Candidate, str, int]], totals: Counter) -> list[str]:
    """VGG-style aliases for a plain conv → activation chain, else the site names."""
    convs = [cand.conv for cand, _, _ in named]
    plain = (
        bool(named)
        and all(convs)
        and len(set(convs)) == len(convs)
        and all(totals[(c.scope, c.function)] == 1 and not c.function for c, _, _ in named)
    )
    if not plain:
        return [name for _, name, _ in named]
    aliases, block, position = [], 0, 0
    for cand, _, _ in named:
        if cand.block != block:
            block, position = cand.block, 0
        position += 1
        aliases.append(f"conv{block}_{position}")
    return aliases


def _layers(named: list[tuple[_Candidate, str, int]], traced: bool) -> list[LayerInfo]:
    totals = Counter((c.scope, c.function) for c, _, _ in named)
    aliases = _aliases(named, totals)
    return [
        LayerInfo(
            number=i + 1,
            name=name,
            alias=alias,
            activation="" if cand.function else cand.scope,
            channels=int(cand.shape[1]),
            call=call,
            kind=cand.kind,
            conv=cand.conv,
            nodes=(cand.node,) if traced else (),
            size=(int(cand.shape[2]), int(cand.shape[3])),
        )
        for i, ((cand, name, call), alias) in enumerate(zip(named, aliases, strict=True))
    ]


def _groups(layers: list[LayerInfo]) -> dict[str, LayerInfo]:
    by_module: dict[str, list[LayerInfo]] = defaultdict(list)
    for layer in layers:
        if layer.activation:
            by_module[layer.activation].append(layer)
    groups = {}
    for path, calls in by_module.items():
        if len(calls) < 2 or len({la.channels for la in calls}) != 1:
            continue
        name = path + GROUP_SUFFIX
        groups[name] = LayerInfo(
            number=0,
            name=name,
            alias=name,
            activation=path,
            channels=calls[0].channels,
            call=-1,
            kind=calls[0].kind,
            conv=calls[0].conv,
            nodes=tuple(n for la in calls for n in la.nodes),
            size=None,
            members=tuple(la.alias for la in calls),
        )
    return groups


def find_sites(
    module: nn.Module,
    readout: str,
    mean: Sequence[float],
    input_size: int | None,
    model_name: str,
) -> Sites:
    """Trace ``module`` and list its sites (falling back to module hooks, with a warning)."""
    try:
        gm = trace(module, readout)
    except Exception as error:
        reason = f"{type(error).__name__}: {' '.join(str(error).split())[:300]}"
        return _hook_sites(module, readout, mean, input_size, model_name, reason)
    cands = _candidates(gm)
    probing, probes = hooked_graph(gm, [c.node for c in cands])
    shapes: dict[str, tuple[int, ...]] = {}
    for node, hook in probes.items():
        hook.add(lambda x, node=node: shapes.__setitem__(node, tuple(x.shape)))
    try:
        probe_size = _run_probe(probing, module, readout, mean, input_size, shapes.clear)
        reproduces = _same_output(gm, module, probe_input(module, mean, probe_size, pattern=True))
    except LayerError:
        reproduces = False
    if not reproduces:  # e.g. forward changes module state (a stride) that tracing baked in
        reason = "the traced graph does not compute what the model's forward does"
        return _hook_sites(module, readout, mean, input_size, model_name, reason)
    kept = []
    for cand in cands:
        if len(shapes.get(cand.node, ())) == 4:
            cand.shape = shapes[cand.node]
            kept.append(cand)
    paths = (path for path, _ in module.named_modules())
    layers = _layers(_name_sites(kept, paths), traced=True)
    hooked, hooks = hooked_graph(gm, [c.node for c in kept])
    return Sites(
        layers=layers,
        groups=_groups(layers),
        graph=gm,
        hooked=hooked,
        hooks=hooks,
        probe_size=probe_size,
    )


def _hook_sites(
    module: nn.Module,
    readout: str,
    mean: Sequence[float],
    input_size: int | None,
    model_name: str,
    reason: str,
) -> Sites:
    """Sites from forward hooks on activation modules, for models fx cannot trace."""
    calls: list[tuple[str, str, str, tuple[int, ...]]] = []  # path, kind, last conv, shape
    last_conv = [""]
    handles = []
    for path, child in module.named_modules():
        kind = activation_kind(child)
        if _ends_block(child):

            def pool_hook(_m, _i, _o):
                calls.append(("", "pool", "", ()))

            handles.append(child.register_forward_hook(pool_hook))
        elif isinstance(child, nn.Conv2d):

            def conv_hook(_m, _i, _o, path=path):
                last_conv[0] = path

            handles.append(child.register_forward_hook(conv_hook))
        elif kind is not None:

            def act_hook(_m, _i, output, path=path, kind=kind):
                calls.append((path, kind, last_conv[0], tuple(getattr(output, "shape", ()))))

            handles.append(child.register_forward_hook(act_hook))

    def reset() -> None:
        calls.clear()
        last_conv[0] = ""

    try:
        probe_size = _run_probe(module, module, readout, mean, input_size, reset)
    finally:
        for handle in handles:
            handle.remove()
    counts = Counter(path for path, _, _, shape in calls if len(shape) == 4)
    refused = {
        path: (
            f"module {path!r} is called {n} times per forward pass and torch.fx cannot trace "
            f"model {model_name!r} ({reason}), so a hook cannot tell its calls apart; make "
            "forward traceable (no data-dependent control flow) or use one module per call"
        )
        for path, n in counts.items()
        if n > 1
    }
    cands, block, since_pool, seen = [], 1, 0, set()
    for path, kind, conv, shape in calls:
        if kind == "pool":
            if since_pool:
                block, since_pool = block + 1, 0
            continue
        if len(shape) != 4 or path in refused or path in seen:
            continue
        seen.add(path)
        since_pool += 1
        cands.append(_Candidate("", path, "", kind, conv, block, shape))
    named = _name_sites(cands)
    layers = _layers(named, traced=False)
    warnings.warn(
        f"torch.fx cannot trace model {model_name!r} ({reason}); attention uses forward hooks "
        "on activation modules instead: functional activations are not seen"
        + (f", and reused modules are refused ({', '.join(refused)})" if refused else ""),
        stacklevel=4,
    )
    return Sites(
        layers=layers,
        groups={},
        graph=None,
        hooked=module,
        hooks={},
        probe_size=probe_size,
        refused=refused,
        trace_error=reason,
    )
