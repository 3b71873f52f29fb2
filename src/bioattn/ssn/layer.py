"""The stabilized supralinear network (SSN) as a torch module.

Every position (y, x) of every feature map k holds one excitatory (E) and one inhibitory (I) cell.
Per cell type a ∈ {E, I} (DESIGN.md, "SSN model"):

    τ_a dr_a/dt = −r_a + k·[I_a]₊ⁿ,    I_a = h_a + (W_aE * r_E) − (W_aI * r_I),

with every W ≥ 0, so Dale's law holds through the signs: E cells only excite, I cells only inhibit.
``W_ab`` is the weight onto cells of type a from cells of type b:

    W_ab[(k, y, x), (k', y', x')] = J_ab · S(k, k') · G_σab(y − y', x − x') / Z_σab(y, x)

* ``J_ab`` (``SSNParams.j_ab``) is the *total* weight a cell receives from population b;
* ``S`` = (1 − m)·1 + m·S₀ mixes a map with the maps similar to it: S₀ is a similarity
  between feature maps with rows normalised to sum 1 (default: identity, each map only talks to
  itself; see :func:`bioattn.ssn.builder.tuning_similarity`) and m = ``map_mixing``;
* ``G_σ`` is a Gaussian in retinotopic distance (separable, truncated at ``truncate``·σ) and
  ``Z_σ(y, x)`` its sum over the grid seen from (y, x): the spatial weights onto every cell sum
  to 1, near borders too (a uniform map blurs to itself).

So every cell receives exactly ``J_ab`` times a weighted mean of population b's rates, and for
spatially and featurally uniform activity the layer reduces to the classic two-population SSN
with weights J (Ahmadian, Rubin & Miller 2013). That makes its stability condition checkable
before any simulation: the SSN stays stable for arbitrarily strong inputs only if inhibition
dominates, ``J_EI·J_IE > J_EE·J_II`` (det W > 0); :class:`SSNParams` refuses other settings.

The lateral weights are never stored densely: they are applied as a channel mixing (a (C, C)
matrix product with S) followed by a depthwise convolution with the Gaussian (one kernel per
population and map, zero padding) and a division by Z. Since S acts on maps and G on positions,
the two commute. E and I rates are kept stacked, (N, 2, C, H, W), so one mixing, one depthwise
convolution and one batched 2×2 product give all four pathways.
:meth:`SSNLayer.dense_weights` builds the dense matrices for checks.

Steady states are found by the cell-local Newton solver of :mod:`bioattn.ssn.solver` (default,
``SSNParams.solver = "newton"``), which stops at the same relative rate of change as Euler,
checks each solution's stability and hands any image it cannot settle to Euler; Euler alone
(``"euler"``) is the reference and gives time courses.

Integration is forward Euler with step ``dt`` (ms) from r = 0 until the relative rate of change
``max|Δr| / (dt · max(max r, 1e-3))`` falls below ``tol`` (per ms) for every image, checked every
``check_every`` steps, or until ``t_max`` ms, whichever comes first. Rates that become non-finite
or exceed ``rate_cap``, and integrations that do not converge by ``t_max``, raise
:class:`SSNInstabilityError` naming the parameters; NaN is never returned.

Gradients (needed for gradient values) are computed at the steady state by implicit
differentiation: one linear solve of the adjoint of the linearised fixed-point equation, by the
solver's preconditioned iteration or (with ``solver="euler"`` or when that does not converge)
by integrating it with the same Euler scheme, which converges exactly when the fixed point is
stable.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from bioattn.attention.gains import as_nchw
from bioattn.errors import BioattnError, ConfigError
from bioattn.ssn.kernels import Grid, build_grid, gaussian_matrix, kernel_spectrum
from bioattn.ssn.solver import (
    RATE_FLOOR,
    adjoint_solve,
    gain_of,
    newton_chunk,
    step_factors,
    unstable_images,
)

#: Per-chunk tensor size (elements) for integration: keeps each step's tensors cache-sized.
CHUNK_ELEMENTS = 1 << 18
#: States (E and I rates of a whole batch) smaller than this are integrated on one thread.
SMALL_STATE_ELEMENTS = 1 << 15
#: How steady states are found: the cell-local Newton solver (:mod:`bioattn.ssn.solver`, with
#: Euler as its fallback) or Euler alone (the reference, and the only way to a time course).
SOLVERS = ("newton", "euler")


class SSNInstabilityError(BioattnError):
    """The SSN diverged, did not converge, or has weights that cannot keep it stable."""


@dataclass(frozen=True)
class SSNParams:
    """Parameters of the SSN (times in ms, rates in Hz).

    ``j_ab`` is the total weight onto a type-a cell from population b (a, b ∈ {e, i}) and
    ``sigma_ab`` the width (in grid positions of the layer) of that pathway's Gaussian; σ = 0
    means same-position only. Defaults: k = 0.04, n = 2, τ_E = 20, τ_I = 10 and the two-population
    weights of Ahmadian et al. (2013) / Hennequin et al. (2018), J_EE = 1.25, J_EI = 0.65,
    J_IE = 1.2, J_II = 0.5 (det = 0.155 > 0); σ_EE = σ_IE = 0.5 > σ_EI = σ_II = 0.3 (E axons
    spread wider than I axons).

    ``map_mixing`` m is the share of lateral input that comes through the similarity between
    maps: the layer uses S_eff = (1 − m)·1 + m·S (S row-normalised). Every pattern of activity,
    however fine in space or across maps, then keeps at least (1 − m)·ĝ(π)² of the recurrent
    weights (0.5 × 0.33 for E axons with the defaults), which is what lets inhibition catch up
    with strongly driven cells; wider kernels or m → 1 leave checkerboard-like patterns almost
    without recurrence, so the supralinear E cells there grow like k·h² unchecked.

    ``drive`` is the feedforward input (in the units of I_a) that a typical active conv unit
    produces: the SSN-CNN builder scales each layer's conv output so that its mean over positive
    entries equals ``drive``. At the default 20 an isolated E cell sits where the SSN turns from
    supralinear to sublinear. I cells receive ``input_ratio_i`` times the E cells' drive.

    Integration: Euler step ``dt``, stop when the relative rate of change per ms is below ``tol``
    for every image (checked every ``check_every`` steps), at most ``t_max`` ms; rates above
    ``rate_cap`` count as divergence. Euler's fixed points do not depend on ``dt``, only its
    path and its stability do: the default dt = 2 ms (τ_I/5) gives the same steady states as
    0.5 ms (readout features within 1.4e-4, docs/ssn.md) at a quarter of the steps and
    stays stable under strong attention currents; plot time courses with dt <= 1 ms. The slowest
    mode of the SSN near its supralinear-to-sublinear transition has τ ≈ 60 ms, so tol = 1e-6
    leaves the rates within ~1e-4 of the fixed point (1e-5: ~1 %); float32 rounding puts a floor
    near 1e-7 under ``tol``.

    Solver: ``solver="newton"`` (default) finds the steady state with the cell-local Newton
    iteration of :mod:`bioattn.ssn.solver` (``damping`` ω, at most ``max_iterations``, stopping
    at the same relative rate of change ``tol``), checks each solution's stability (cells whose
    own linearisation is unstable trigger a power iteration over ``verify_periods`` × the
    longer time constant) and hands any image it cannot settle or verify to Euler;
    ``"euler"`` integrates only (the reference). Time courses always use Euler.
    """

    k: float = 0.04
    n: float = 2.0
    tau_e: float = 20.0
    tau_i: float = 10.0
    j_ee: float = 1.25
    j_ei: float = 0.65
    j_ie: float = 1.2
    j_ii: float = 0.5
    sigma_ee: float = 0.5
    sigma_ei: float = 0.3
    sigma_ie: float = 0.5
    sigma_ii: float = 0.3
    truncate: float = 3.0
    map_mixing: float = 0.5
    drive: float = 20.0
    input_ratio_i: float = 1.0
    dt: float = 2.0
    tol: float = 1e-6
    t_max: float = 2000.0
    rate_cap: float = 1e4
    check_every: int = 5
    solver: str = "newton"
    max_iterations: int = 200
    damping: float = 0.9
    verify_periods: float = 8.0

    def __post_init__(self) -> None:
        for name in ("k", "tau_e", "tau_i", "dt", "tol", "t_max", "rate_cap", "truncate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"SSNParams.{name} must be a positive finite number, got {value}")
        if not (math.isfinite(self.n) and self.n >= 1):
            raise ConfigError(f"SSNParams.n must be >= 1 (supralinear power law), got {self.n}")
        magnitudes = ("j_ee", "j_ei", "j_ie", "j_ii")
        magnitudes += ("sigma_ee", "sigma_ei", "sigma_ie", "sigma_ii")
        for name in magnitudes:
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ConfigError(
                    f"SSNParams.{name} must be >= 0 (Dale's law: signs come from the cell type, "
                    f"weights are magnitudes), got {value}"
                )
        if not (math.isfinite(self.drive) and self.drive > 0):
            raise ConfigError(f"SSNParams.drive must be a positive number, got {self.drive}")
        if not (math.isfinite(self.map_mixing) and 0 <= self.map_mixing < 1):
            raise ConfigError(
                f"SSNParams.map_mixing must be in [0, 1) (the share of lateral input from other "
                f"maps; 1 would leave patterns across maps unstabilised), got {self.map_mixing}"
            )
        if not (math.isfinite(self.input_ratio_i) and self.input_ratio_i >= 0):
            raise ConfigError(f"SSNParams.input_ratio_i must be >= 0, got {self.input_ratio_i}")
        if self.dt >= min(self.tau_e, self.tau_i):
            raise ConfigError(
                f"SSNParams.dt = {self.dt} ms must be smaller than both time constants "
                f"(tau_e = {self.tau_e}, tau_i = {self.tau_i}); Euler needs dt <= tau/5 or so"
            )
        if int(self.check_every) < 1:
            raise ConfigError(f"SSNParams.check_every must be >= 1, got {self.check_every}")
        if self.solver not in SOLVERS:
            raise ConfigError(
                f"SSNParams.solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}"
            )
        if not isinstance(self.max_iterations, int) or self.max_iterations < 1:
            raise ConfigError(f"SSNParams.max_iterations must be >= 1, got {self.max_iterations}")
        if not (math.isfinite(self.verify_periods) and self.verify_periods > 0):
            raise ConfigError(
                f"SSNParams.verify_periods must be a positive number, got {self.verify_periods}"
            )
        if not (math.isfinite(self.damping) and 0 < self.damping <= 1):
            raise ConfigError(f"SSNParams.damping must be in (0, 1], got {self.damping}")
        if self.n > 1 and self.determinant() <= 0:
            raise SSNInstabilityError(
                "SSN weights cannot be stable for strong inputs: inhibition must dominate, "
                f"J_EI·J_IE > J_EE·J_II, but J_EI·J_IE = {self.j_ei * self.j_ie:.4g} <= "
                f"J_EE·J_II = {self.j_ee * self.j_ii:.4g} ({self.describe()}); lower j_ee or "
                "j_ii, or raise j_ei or j_ie"
            )
        if self.n > 1:
            worst, frequency = self.spatial_mode_determinant()
            if worst < -1e-9 * self.j_ee * self.j_ii:
                raise SSNInstabilityError(
                    "SSN lateral widths make a spatial pattern unstable for strong inputs: at "
                    f"spatial frequency {frequency:.3g} rad/position the effective "
                    f"J_EI·J_IE − J_EE·J_II is {worst:.3g} < 0 (sigma_ee={self.sigma_ee:g}, "
                    f"sigma_ei={self.sigma_ei:g}, sigma_ie={self.sigma_ie:g}, "
                    f"sigma_ii={self.sigma_ii:g}; {self.describe()}); keep sigma_ie <= "
                    "sigma_ee and sigma_ei <= sigma_ii (equal widths are always safe), or raise "
                    "truncate"
                )

    def determinant(self) -> float:
        """det of the signed two-population weight matrix, J_EI·J_IE − J_EE·J_II."""
        return self.j_ei * self.j_ie - self.j_ee * self.j_ii

    def spatial_mode_determinant(self, points: int = 129) -> tuple[float, float]:
        """The smallest det of the effective 2×2 weights over spatial Fourier modes.

        Lateral weights seen by a spatial pattern of frequency (q₁, q₂) are J_ab·ĝ_ab(q₁)ĝ_ab(q₂),
        with ĝ the spectrum of the (normalised, truncated) 1-D Gaussian. Each mode is stable for
        all input strengths only if its det, J_EI·J_IE·ĝ_EIĝ_IE − J_EE·J_II·ĝ_EEĝ_II, is
        positive; q = 0 gives :meth:`determinant`. Returns (smallest det, its |q|).
        """
        q = torch.linspace(0.0, math.pi, points, dtype=torch.float64)
        spectra = {}
        for key in ("ee", "ei", "ie", "ii"):
            one = kernel_spectrum(getattr(self, f"sigma_{key}"), self.truncate, q)
            spectra[key] = one.view(-1, 1) * one.view(1, -1)
        det = (
            self.j_ei * self.j_ie * spectra["ei"] * spectra["ie"]
            - self.j_ee * self.j_ii * spectra["ee"] * spectra["ii"]
        )
        index = int(torch.argmin(det))
        q1, q2 = q[index // points], q[index % points]
        return float(det.min()), float(torch.sqrt(q1**2 + q2**2))

    def weight_matrix(self) -> torch.Tensor:
        """The signed 2×2 matrix [[J_EE, −J_EI], [J_IE, −J_II]] (rows: target, columns: source)."""
        return torch.tensor([[self.j_ee, -self.j_ei], [self.j_ie, -self.j_ii]], dtype=torch.float64)

    def describe(self) -> str:
        """The parameters that decide stability, as one line."""
        return (
            f"k={self.k:g}, n={self.n:g}, tau_e={self.tau_e:g}, tau_i={self.tau_i:g}, "
            f"J_EE={self.j_ee:g}, J_EI={self.j_ei:g}, J_IE={self.j_ie:g}, J_II={self.j_ii:g}, "
            f"drive={self.drive:g}, input_ratio_i={self.input_ratio_i:g}, dt={self.dt:g}"
        )

    def to_dict(self) -> dict[str, float | int | str]:
        """Plain-dict form for config files."""
        return asdict(self)


@contextmanager
def _integration_mode(elements: int) -> Iterator[None]:
    """Flush subnormal floats to zero and, for small states, use one thread while integrating.

    Squaring tiny drives gives subnormal numbers, which slow CPU arithmetic by an order of
    magnitude; zeroing them changes rates by less than 1e-38 Hz. A state of fewer than
    :data:`SMALL_STATE_ELEMENTS` values gains nothing from intra-op threads, and each of the
    hundreds of Euler steps pays their synchronisation: on a busy machine that made a tiny
    network 100× slower. Both settings are global in torch and are restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    if elements < SMALL_STATE_ELEMENTS and threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


@dataclass
class SSNResult:
    """Outcome of integrating the SSN: rates at the end, steps taken and optional time course."""

    r_e: torch.Tensor  # (N, C, H, W) E rates (Hz), not rescaled
    r_i: torch.Tensor  # (N, C, H, W) I rates (Hz)
    steps: int  # Euler steps taken (the largest over chunks)
    time_ms: float  # simulated time
    trace_e: torch.Tensor | None = None  # (T + 1, N, C, H, W) when a trace was asked for
    trace_i: torch.Tensor | None = None
    times: torch.Tensor | None = None  # (T + 1,) ms
    relative_change: float = 0.0  # last measured relative rate of change (per ms)
    iterations: int = 0  # Newton iterations (the largest over chunks); 0 with solver="euler"
    handed_to_euler: int = 0  # images the Newton solver could not settle, solved by Euler


@dataclass
class _Currents:
    e: torch.Tensor | None = None
    i: torch.Tensor | None = None

    def same_as(self, other: _Currents) -> bool:
        """True when both hold equal currents (exact comparison)."""
        return all(
            (a is None and b is None)
            or (a is not None and b is not None and a.shape == b.shape and torch.equal(a, b))
            for a, b in ((self.e, other.e), (self.i, other.i))
        )


@dataclass
class _MemoEntry:
    x: torch.Tensor
    key: tuple
    currents: _Currents
    out: torch.Tensor


def _as_nchw(t: torch.Tensor, channels: int) -> torch.Tensor:
    """A current as a tensor broadcastable to (N, C, H, W) (see :func:`gains.as_nchw`)."""
    if t.ndim == 0:
        return t.view(1, 1, 1, 1)
    if t.ndim == 1 and t.numel() != channels:
        raise ConfigError(
            f"a per-map attention current must have one value per feature map ({channels}), "
            f"got {t.numel()}"
        )
    return as_nchw(t)


class SSNLayer(nn.Module):
    """SSN replacing a ReLU: conv output → E and I drives → steady-state E rates (rescaled).

    Args:
        channels: number of feature maps C.
        params: :class:`SSNParams`.
        similarity: (C, C) non-negative similarity between maps (rows are normalised to sum 1
            here); ``None`` means the identity (lateral connections only within a map).
        name: a label for error messages (the SSN-CNN builder uses the layer alias).

    Buffers: ``drive_scale`` (scalar: conv output × drive_scale = E drive), ``output_scale``
    ((C,): factor applied to E rates before they go on) and ``similarity`` (normalised). The
    builder sets the two scales by calibration (see :func:`bioattn.ssn.builder.calibrate_ssn`).

    Attention enters as additive currents per map (or any tensor broadcastable to (N, C, H, W))
    to E and/or I cells, set with :meth:`set_currents` or :func:`bioattn.ssn.ssn_attention`.

    Without gradients the layer remembers its last few results (``memo_size``) keyed by the
    exact input, currents and buffers, so re-running a network whose early layers see unchanged
    input (attention at a later layer) costs nothing there.
    """

    #: Kept out of torch.fx tracing (its solver loops until convergence): the SSN-CNN's site is
    #: the identity ReLU after it (see :mod:`bioattn.models.sites`).
    bioattn_leaf = True

    def __init__(
        self,
        channels: int,
        params: SSNParams | None = None,
        similarity: torch.Tensor | None = None,
        name: str = "ssn",
        memo_size: int = 3,
    ) -> None:
        super().__init__()
        if int(channels) < 1:
            raise ConfigError(f"an SSN layer needs at least one feature map, got {channels}")
        self.channels = int(channels)
        self._params = params if params is not None else SSNParams()
        self.name = name
        self.memo_size = int(memo_size)
        self.memo_max_elements = 1 << 23
        self.register_buffer("drive_scale", torch.tensor(1.0))
        self.register_buffer("output_scale", torch.ones(self.channels))
        self.register_buffer("similarity", torch.eye(self.channels))
        self._effective: tuple[tuple, torch.Tensor | None] | None = None
        self.last_steps = 0  # Euler steps of the latest integration (largest over its chunks)
        self.last_iterations = 0  # Newton iterations of the latest solve (largest over chunks)
        self.last_handed_to_euler = 0  # images of the latest solve that Newton left to Euler
        if similarity is not None:
            self.set_similarity(similarity)
        self._currents = _Currents()
        self._memo: list[_MemoEntry] = []
        self._grids: dict[tuple, Grid] = {}

    # --- configuration ----------------------------------------------------------------------
    @property
    def params(self) -> SSNParams:
        """The SSN parameters; assigning new ones keeps the scales and similarity."""
        return self._params

    @params.setter
    def params(self, params: SSNParams) -> None:
        if not isinstance(params, SSNParams):
            raise ConfigError(f"params must be SSNParams, got {type(params).__name__}")
        self._params = params
        self._grids.clear()
        self._memo.clear()

    def set_similarity(self, similarity: torch.Tensor) -> None:
        """Set the (C, C) map similarity S₀ (rows are normalised, then mixed with the identity
        by ``params.map_mixing``); negative or non-finite entries are errors."""
        s = torch.as_tensor(similarity, dtype=torch.float64)
        if s.shape != (self.channels, self.channels):
            raise ConfigError(
                f"similarity for {self.name} must be ({self.channels}, {self.channels}), "
                f"got {tuple(s.shape)}"
            )
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ConfigError(
                f"similarity for {self.name} must be finite and >= 0 (Dale's law keeps lateral "
                "weights non-negative; clip negative correlations to 0)"
            )
        sums = s.sum(dim=1, keepdim=True)
        if bool((sums <= 0).any()):
            empty = torch.nonzero(sums.view(-1) <= 0).view(-1).tolist()
            raise ConfigError(
                f"similarity for {self.name} has all-zero rows for maps {empty[:10]}; every map "
                "needs some similarity (give it 1 with itself)"
            )
        normalised64 = s / sums
        lowest = float(torch.linalg.eigvals(normalised64).real.min())
        if lowest < -1e-6:
            raise SSNInstabilityError(
                f"similarity for SSN layer {self.name} has an eigenvalue {lowest:.3g} < 0: in "
                "that pattern of maps the lateral weights change sign (I→I inhibition becomes "
                "excitation) and the SSN diverges at strong drive; use a positive semi-definite "
                "similarity, e.g. the Gram matrix of non-negative vectors "
                "(bioattn.ssn.builder.tuning_similarity)"
            )
        with torch.no_grad():
            self.similarity.copy_(normalised64.to(self.similarity.dtype))

    def effective_similarity(
        self, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ) -> torch.Tensor | None:
        """S_eff = (1 − m)·1 + m·S₀ as the lateral weights use it; ``None`` for the identity."""
        m = self.params.map_mixing
        key = (self.similarity._version, m, dtype, torch.device(device))
        if self._effective is None or self._effective[0] != key:
            s0 = self.similarity.to(torch.float64)
            eye = torch.eye(self.channels, dtype=torch.float64)
            value = None
            if m > 0 and not torch.equal(s0, eye):
                value = ((1.0 - m) * eye + m * s0).to(dtype=dtype, device=device)
            self._effective = (key, value)
        return self._effective[1]

    def set_scales(self, drive_scale: float | None = None, output_scale: Any = None) -> None:
        """Set the drive scale (scalar > 0) and/or the per-map output scale ((C,) >= 0)."""
        with torch.no_grad():
            if drive_scale is not None:
                value = float(drive_scale)
                if not (math.isfinite(value) and value > 0):
                    raise ConfigError(f"drive_scale of {self.name} must be > 0, got {value}")
                self.drive_scale.fill_(value)
            if output_scale is not None:
                scale = torch.as_tensor(output_scale, dtype=self.output_scale.dtype).reshape(-1)
                if scale.numel() == 1:
                    scale = scale.expand(self.channels)
                if scale.numel() != self.channels or not bool(torch.isfinite(scale).all()):
                    raise ConfigError(
                        f"output_scale of {self.name} must be {self.channels} finite values"
                    )
                if bool((scale < 0).any()):
                    raise ConfigError(f"output_scale of {self.name} must be >= 0")
                self.output_scale.copy_(scale)

    def set_currents(
        self, current_e: torch.Tensor | float | None, current_i: torch.Tensor | float | None
    ) -> None:
        """Set the attention currents added to the E and I drives (``None``: no current)."""
        currents = []
        for value in (current_e, current_i):
            if value is None:
                currents.append(None)
                continue
            t = torch.as_tensor(value, dtype=torch.float32)
            if not bool(torch.isfinite(t).all()):
                raise ConfigError(f"attention current for {self.name} must be finite")
            currents.append(_as_nchw(t, self.channels).clone())
        self._currents = _Currents(currents[0], currents[1])

    def get_currents(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The attention currents now set (E, I), as broadcastable tensors or ``None``."""
        return self._currents.e, self._currents.i

    def clear_memo(self) -> None:
        """Forget remembered results."""
        self._memo.clear()

    def extra_repr(self) -> str:
        return f"channels={self.channels}, name={self.name!r}, {self.params.describe()}"

    # --- lateral weights --------------------------------------------------------------------
    def _widths(self) -> tuple[bool, tuple[tuple[float, float], tuple[float, float]]]:
        p = self.params
        shared = p.sigma_ee == p.sigma_ie and p.sigma_ei == p.sigma_ii
        return shared, ((p.sigma_ee, p.sigma_ei), (p.sigma_ie, p.sigma_ii))

    def _grid(self, height: int, width: int, like: torch.Tensor) -> Grid:
        key = (height, width, like.dtype, like.device)
        grid = self._grids.get(key)
        if grid is None:
            shared, sigmas = self._widths()
            grid = build_grid(
                sigmas, shared, self.channels, self.params.truncate, height, width, like
            )
            self._grids[key] = grid
        return grid

    def _mix(self, r: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """Apply the map similarity S (or Sᵀ) along the map axis of (N, 2, C, H, W)."""
        s = self.effective_similarity(r.dtype, r.device)
        if s is None:
            return r
        n, two, c, h, w = r.shape
        s = s.T if transpose else s
        return torch.matmul(s, r.reshape(n * two, c, h * w)).view(n, two, c, h, w)

    def _signed(self, like: torch.Tensor, factor: float = 1.0) -> torch.Tensor:
        """factor × [[J_EE, −J_EI], [J_IE, −J_II]] in ``like``'s dtype and device."""
        return (self.params.weight_matrix() * factor).to(dtype=like.dtype, device=like.device)

    def _apply_lateral(
        self, r: torch.Tensor, jmat: torch.Tensor, base: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``base`` + Σ_b jmat[a, b] · (S ⊗ G_ab) r_b for stacked rates r (N, 2, C, H, W)."""
        n = r.shape[0]
        grid = self._grid(r.shape[-2], r.shape[-1], r)
        blurred = grid.blur(self._mix(r))
        if grid.shared:
            flat = blurred.reshape(n, 2, -1)
            if base is None:
                return torch.matmul(jmat, flat).view_as(r)
            return torch.baddbmm(base.reshape(n, 2, -1), jmat.expand(n, 2, 2), flat).view_as(r)
        out = (jmat.view(1, 2, 2, 1, 1, 1) * blurred).sum(dim=2)
        return out if base is None else out.add_(base)

    def _apply_lateral_transpose(self, p: torch.Tensor, jmat: torch.Tensor) -> torch.Tensor:
        """The adjoint of :meth:`_apply_lateral` (without base): Σ_a jmat[a, b] (S ⊗ G_ab)ᵀ p_a."""
        n = p.shape[0]
        grid = self._grid(p.shape[-2], p.shape[-1], p)
        if grid.shared:
            mixed = torch.matmul(jmat.T, p.reshape(n, 2, -1)).view_as(p)
            back = grid.blur(mixed, transpose=True)
        else:
            back = (jmat.view(1, 2, 2, 1, 1, 1) * grid.blur(p, transpose=True)).sum(dim=1)
        return self._mix(back, transpose=True)

    def lateral_input(
        self, r_e: torch.Tensor, r_i: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Recurrent input (W_EE*r_E − W_EI*r_I, W_IE*r_E − W_II*r_I) for rates (N, C, H, W)."""
        r = torch.stack([r_e, r_i], dim=1)
        out = self._apply_lateral(r, self._signed(r))
        return out[:, 0], out[:, 1]

    def dense_weights(
        self, height: int, width: int, dtype: torch.dtype = torch.float64
    ) -> dict[str, torch.Tensor]:
        """Dense non-negative weight magnitudes ``{"EE", "EI", "IE", "II"}`` on an H×W grid.

        Each is (C·H·W, C·H·W), indexed (target, source) with unit order (map, row, column):
        ``W_ab = J_ab · S ⊗ G_ab``. Only for checks on small grids (memory grows as (CHW)²).
        """
        p = self.params
        s = self.effective_similarity(dtype)
        s = torch.eye(self.channels, dtype=dtype) if s is None else s
        out = {}
        for key, j, sigma in (
            ("EE", p.j_ee, p.sigma_ee),
            ("EI", p.j_ei, p.sigma_ei),
            ("IE", p.j_ie, p.sigma_ie),
            ("II", p.j_ii, p.sigma_ii),
        ):
            rows = gaussian_matrix(height, sigma, p.truncate, dtype)
            cols = gaussian_matrix(width, sigma, p.truncate, dtype)
            out[key] = j * torch.kron(s, torch.kron(rows, cols))
        return out

    def signed_weight_matrix(
        self, height: int, width: int, dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """The full signed (2CHW, 2CHW) matrix [[W_EE, −W_EI], [W_IE, −W_II]] (E units first)."""
        w = self.dense_weights(height, width, dtype)
        return torch.cat(
            [torch.cat([w["EE"], -w["EI"]], dim=1), torch.cat([w["IE"], -w["II"]], dim=1)], dim=0
        )

    # --- dynamics ---------------------------------------------------------------------------
    def drives(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Feedforward drive plus attention currents: (h_E, h_I) for conv output ``x``."""
        h = x * self.drive_scale.to(x.dtype)
        h_e, h_i = h, h * self.params.input_ratio_i
        if self._currents.e is not None:
            h_e = h_e + self._currents.e.to(x.dtype)
        if self._currents.i is not None:
            h_i = h_i + self._currents.i.to(x.dtype)
        return h_e, h_i

    def _error(self, what: str, detail: str, advice: str) -> SSNInstabilityError:
        return SSNInstabilityError(
            f"SSN layer {self.name}: {what} ({detail}; {self.params.describe()}, "
            f"tol={self.params.tol:g}, t_max={self.params.t_max:g} ms, "
            f"rate_cap={self.params.rate_cap:g} Hz); {advice}"
        )

    def _relative_change(
        self, step: int, d: torch.Tensor, r: torch.Tensor, inv_tau: torch.Tensor
    ) -> torch.Tensor:
        """Per-image relative rate of change per ms, max|dr/dt| / max(max r, floor).

        Raises on non-finite or capped rates.
        """
        p = self.params
        dims = tuple(range(1, r.ndim))
        top = r.abs().amax(dim=dims)
        worst = float(top.max())
        if not math.isfinite(worst) or worst > p.rate_cap:
            raise self._error(
                "rates diverged",
                f"max rate {worst:.4g} Hz at t = {step * p.dt:g} ms",
                "the fixed point is unstable for this input, or the Euler step is too coarse "
                "for it: lower the drive or attention current, lower j_ee, raise j_ei / j_ie, "
                "or try a smaller dt",
            )
        change = (d.abs() * inv_tau).amax(dim=dims)
        return change / top.clamp(min=RATE_FLOOR)

    def _integrate_chunk(
        self,
        hs: torch.Tensor,
        r: torch.Tensor,
        out: torch.Tensor,
        trace: list | None,
        record_every: int = 1,
    ) -> tuple[int, float]:
        """Euler steps on stacked, pre-scaled drives ``hs`` (N, 2, C, H, W) from state ``r``.

        Each image stops as soon as it has converged (so its result does not depend on the
        other images of the batch); results are written into ``out``.
        """
        p = self.params
        c = p.k ** (1.0 / p.n)  # k·[I]₊ⁿ = [c·I]₊ⁿ: fold k into the drive and the weights
        jmat = self._signed(r, c)
        alpha, inv_tau = step_factors(p, r)
        max_steps = max(1, math.ceil(p.t_max / p.dt))
        active = torch.arange(r.shape[0], device=r.device)
        relative = torch.full((r.shape[0],), math.inf)
        for step in range(1, max_steps + 1):
            drive = self._apply_lateral(r, jmat, base=hs).clamp_(min=0.0)
            rate = drive.square_() if p.n == 2 else drive.pow_(p.n)
            d = rate.sub_(r)  # k[I]₊ⁿ − r
            r.addcmul_(d, alpha)
            if trace is not None and step % record_every == 0:
                trace.append(r.clone())
            if step % p.check_every and step != max_steps:
                continue
            relative = self._relative_change(step, d, r, inv_tau)
            done = relative < p.tol
            if bool(done.all()):
                out[active] = r
                if trace is not None and step % record_every:
                    trace.append(r.clone())
                return step, float(relative.max())
            if trace is None and bool(done.any()):
                out[active[done]] = r[done]
                keep = ~done
                active, r, hs = active[keep], r[keep], hs[keep]
        raise self._error(
            "no steady state",
            f"relative rate of change still {float(relative.max()):.3g}/ms > tol after "
            f"{p.t_max:g} ms",
            "the network may oscillate or approach its fixed point too slowly: raise j_ei / "
            "j_ie or lower j_ee (more inhibition), lower the drive or attention current, or "
            "raise t_max",
        )

    def steady_state(
        self,
        h_e: torch.Tensor,
        h_i: torch.Tensor,
        initial: tuple[torch.Tensor, torch.Tensor] | None = None,
        return_trace: bool = False,
        record_every: int = 1,
    ) -> SSNResult:
        """Steady state from r = 0 (or ``initial``) with drives ``h_e``, ``h_i`` (N, C, H, W).

        Images are solved in chunks (``params.solver``: Newton with Euler as fallback, or Euler
        alone); each image stops when it has converged. With
        ``return_trace`` the time course is kept, every ``record_every`` steps and for every
        cell (mind the memory: frames × N × 2C × H × W floats); the batch is then integrated as
        one chunk and runs until all images have converged.
        """
        if h_e.shape != h_i.shape or h_e.ndim != 4 or h_e.shape[1] != self.channels:
            raise ConfigError(
                f"SSN layer {self.name} needs drives of shape (N, {self.channels}, H, W), got "
                f"{tuple(h_e.shape)} and {tuple(h_i.shape)}"
            )
        p = self.params
        if int(record_every) < 1:
            raise ConfigError(f"record_every must be >= 1, got {record_every}")
        with torch.no_grad(), _integration_mode(2 * h_e.numel()):
            hs = torch.stack([h_e.detach(), h_i.detach()], dim=1) * p.k ** (1.0 / p.n)
            if initial is None:
                r = torch.zeros_like(hs)
            else:
                r = torch.stack([initial[0].detach(), initial[1].detach()], dim=1).to(hs.dtype)
            out = torch.empty_like(hs)
            n = hs.shape[0]
            chunk = n if return_trace else max(1, CHUNK_ELEMENTS // max(1, hs[0].numel()))
            trace: list | None = [r.clone()] if return_trace else None
            steps, relative, iterations, handed_to_euler = 0, 0.0, 0, 0
            for start in range(0, n, chunk):
                part = slice(start, start + chunk)
                if p.solver == "euler" or return_trace:
                    s, rel = self._integrate_chunk(
                        hs[part], r[part].clone(), out[part], trace, int(record_every)
                    )
                    steps, relative = max(steps, s), max(relative, rel)
                    continue
                it, rel, lost = newton_chunk(self, hs[part], r[part].clone(), out[part])
                iterations, relative = max(iterations, it), max(relative, rel)
                solved = torch.ones(hs[part].shape[0], dtype=torch.bool, device=hs.device)
                solved[lost] = False
                checked = torch.nonzero(solved).view(-1)
                growing = checked[unstable_images(self, hs[part][checked], out[part][checked])]
                lost = torch.cat([lost, growing])
                if lost.numel():
                    # the reference decides: it converges to the stable state or raises
                    handed_to_euler += int(lost.numel())
                    settled = torch.empty_like(hs[part][lost])
                    s, rel = self._integrate_chunk(
                        hs[part][lost], r[part][lost].clone(), settled, None
                    )
                    out[part][lost] = settled
                    steps, relative = max(steps, s), max(relative, rel)
        self.last_steps = steps
        self.last_iterations = iterations
        self.last_handed_to_euler = handed_to_euler
        result = SSNResult(
            out[:, 0].contiguous(),
            out[:, 1].contiguous(),
            steps,
            steps * p.dt,
            relative_change=relative,
            iterations=iterations,
            handed_to_euler=handed_to_euler,
        )
        if trace is not None:
            stacked = torch.stack(trace)
            result.trace_e, result.trace_i = stacked[:, :, 0], stacked[:, :, 1]
            times = torch.arange(len(trace), dtype=torch.float64) * (p.dt * record_every)
            times[-1] = steps * p.dt  # the last frame is the final state
            result.times = times
        return result

    def simulate(
        self, x: torch.Tensor, return_trace: bool = False, record_every: int = 1
    ) -> SSNResult:
        """Steady state (and optionally the time course) for conv output ``x``, no rescaling."""
        h_e, h_i = self.drives(x)
        return self.steady_state(h_e, h_i, return_trace=return_trace, record_every=record_every)

    def adjoint(
        self,
        h_e: torch.Tensor,
        h_i: torch.Tensor,
        r_e: torch.Tensor,
        r_i: torch.Tensor,
        grad_e: torch.Tensor,
        grad_i: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradients with respect to the drives (h_E, h_I) of a loss with gradient ``grad_e``
        (and ``grad_i``) at the steady state (r_E, r_I), by implicit differentiation.

        At the fixed point r = F(h + W r), with D = F′: dr = (1 − D W)⁻¹ D dh, so
        ∂L/∂h = D u with u = g + Wᵀ D u: one linear solve, by the Newton solver's preconditioned
        iteration (:func:`bioattn.ssn.solver.adjoint_solve`) or, with ``solver="euler"`` or when
        that does not converge, by Euler-integrating τ du/dt = −u + g + Wᵀ D u, which converges
        exactly when the fixed point is stable.
        """
        p = self.params
        with torch.no_grad(), _integration_mode(2 * h_e.numel()):
            c = p.k ** (1.0 / p.n)
            hs = torch.stack([h_e, h_i], dim=1).detach() * c
            r = torch.stack([r_e, r_i], dim=1).detach()
            drive = self._apply_lateral(r, self._signed(r, c), base=hs).clamp_(min=0.0)
            # D = dF/dI = n·k·[I]₊ⁿ⁻¹ = n·c·[c·I]₊ⁿ⁻¹
            gain = gain_of(drive, p.n).mul_(c)
            g = torch.stack(
                [grad_e.detach(), torch.zeros_like(grad_e) if grad_i is None else grad_i], dim=1
            ).to(r.dtype)
            if p.solver == "newton":
                solved, _relative = adjoint_solve(self, gain, g)
                if solved is not None:
                    grad = gain * solved
                    return grad[:, 0], grad[:, 1]
            jmat = self._signed(r)
            alpha, inv_tau = step_factors(p, r)
            u = g.clone()
            max_steps = max(1, math.ceil(p.t_max / p.dt))
            relative = math.inf
            dims = tuple(range(1, u.ndim))
            for step in range(1, max_steps + 1):
                d = self._apply_lateral_transpose(gain * u, jmat).add_(g).sub_(u)
                u.addcmul_(d, alpha)
                if step % p.check_every and step != max_steps:
                    continue
                top = u.abs().amax(dim=dims)
                if not bool(torch.isfinite(top).all()):
                    raise self._error(
                        "gradient diverged",
                        f"adjoint not finite at step {step}",
                        "the steady state is unstable; see the forward advice",
                    )
                change = (d.abs() * inv_tau).amax(dim=dims)
                relative = float((change / top.clamp(min=1e-30)).max())
                if relative < p.tol:
                    grad = gain * u
                    return grad[:, 0], grad[:, 1]
            raise self._error(
                "gradient did not converge",
                f"adjoint relative change {relative:.3g}/ms > tol after {p.t_max:g} ms",
                "the steady state is close to unstable: add inhibition or lower the drive",
            )

    # --- forward ----------------------------------------------------------------------------
    def _memo_key(self, x: torch.Tensor) -> tuple:
        # buffers' in-place version counters change whenever a scale or the similarity changes
        return (
            tuple(x.shape),
            x.dtype,
            x.device,
            self._params,
            self.drive_scale._version,
            self.similarity._version,
        )

    def _memo_get(self, x: torch.Tensor) -> torch.Tensor | None:
        key = self._memo_key(x)
        for index, entry in enumerate(self._memo):
            if (
                entry.key == key
                and entry.currents.same_as(self._currents)
                and torch.equal(entry.x, x)
            ):
                self._memo.append(self._memo.pop(index))
                return entry.out
        return None

    def _memo_put(self, x: torch.Tensor, out: torch.Tensor) -> None:
        if self.memo_size < 1 or x.numel() > self.memo_max_elements:
            return
        entry = _MemoEntry(x.detach().clone(), self._memo_key(x), self._currents, out)
        self._memo.append(entry)
        del self._memo[: -self.memo_size]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Steady-state E rates × ``output_scale`` for conv output ``x`` (N, C, H, W).

        On the ``meta`` device (a shape-only pass) it returns an empty tensor of ``x``'s shape.
        """
        if x.is_meta:
            return torch.empty_like(x)
        scale = self.output_scale.to(x.dtype).view(1, -1, 1, 1)
        h_e, h_i = self.drives(x)
        if torch.is_grad_enabled() and (h_e.requires_grad or h_i.requires_grad):
            return _SteadyState.apply(h_e, h_i, self) * scale
        rates = self._memo_get(x)
        if rates is None:
            rates = self.steady_state(h_e, h_i).r_e
            self._memo_put(x, rates)
        return rates * scale


class _SteadyState(torch.autograd.Function):
    """Steady-state E rates of an SSN layer with implicit-function gradients."""

    @staticmethod
    def forward(ctx: Any, h_e: torch.Tensor, h_i: torch.Tensor, layer: SSNLayer) -> torch.Tensor:
        result = layer.steady_state(h_e.detach(), h_i.detach())
        ctx.layer = layer
        ctx.save_for_backward(h_e.detach(), h_i.detach(), result.r_e, result.r_i)
        return result.r_e

    @staticmethod
    def backward(ctx: Any, grad_e: torch.Tensor) -> tuple[Any, ...]:
        h_e, h_i, r_e, r_i = ctx.saved_tensors
        grad_h_e, grad_h_i = ctx.layer.adjoint(h_e, h_i, r_e, r_i, grad_e)
        return grad_h_e, grad_h_i, None


@contextmanager
def layer_currents(
    layer: SSNLayer,
    current_e: torch.Tensor | float | None,
    current_i: torch.Tensor | float | None,
) -> Iterator[None]:
    """Context in which ``layer`` carries the given attention currents (restored on exit)."""
    saved = layer._currents
    try:
        layer.set_currents(current_e, current_i)
        yield
    finally:
        layer._currents = saved
