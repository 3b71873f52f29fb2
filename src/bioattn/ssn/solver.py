"""Steady states of an SSN layer by a root solver instead of thousands of Euler steps.

The steady state solves ``R(r) = F(h + W r) − r = 0`` with F the supralinear rate function
(k folded into the drive: F(x) = [x]₊ⁿ with x = c·I, c = k^(1/n)). Its Jacobian is
``D W − 1`` with ``D = F′`` per cell. The solver is a damped Newton iteration whose linear solve
keeps only the *cell-local* part of the Jacobian: each cell's own E and I cells and their
self-connections, one 2×2 block per (map, position)::

    r ← [r + ω (1 − D W_self)⁻¹ R(r)]₊

W_self is the weight a cell gets from the E and I cells at its own position of its own map,
J_ab · S_eff(k, k) · G_b(0)/Z_b(y, x). That block holds the fast, strong E–I interaction that
forces Euler to small steps (τ_I = 10 ms) while the slowest mode (≈ 60 ms) sets how many it
needs; the lateral remainder is weak (a fraction 1 − S_eff(k,k)·G(0)/Z of each pathway), so the
iteration contracts quickly: 20–22 iterations reach tol = 1e-6 on the default SSN-CNN where
Euler takes 255–280 steps (BENCHMARKS.md). Each iteration costs one lateral operator (as one
Euler step) plus a few elementwise operations.

Choice of method (docs/ssn.md has the measurements): torchdeq's Anderson acceleration of the
Euler map and scipy's Newton–Krylov were tried first on the default SSN-CNN's conv1_1 drives.
Anderson needed 84–117 evaluations (from 280) but cost more per image than Euler (its (B, m, D)
history products dominate on these states); Newton–Krylov (float64, flattened batch) needed
150–250 evaluations at far higher cost per evaluation. The cell-local Newton needs neither a
library nor a Krylov space, and its convergence test is Euler's own: the relative rate of change
``max|R/τ| / max r < tol`` per image, evaluated exactly at the state (so a converged state is one
where an Euler step would also stop).

A root solver finds fixed points whether or not the dynamics would settle there. Two guards keep
the result the network's *stable* steady state:

* images that do not converge within ``SSNParams.max_iterations``, whose rates leave the finite
  range or exceed ``rate_cap`` are handed to Euler from rest (which converges or raises the
  documented :class:`~bioattn.ssn.layer.SSNInstabilityError`);
* every converged state is checked for stability (:func:`unstable_images`: each cell's
  two-population linearisation with its own gains, and a short power iteration for fast
  patterns across positions and maps); an image that fails is handed to Euler too.

The adjoint (gradients through the steady state) solves ``(1 − Wᵀ D) u = g`` by the same
preconditioned iteration, transposed, falling back to Euler on the adjoint ODE when it does not
converge.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from bioattn.ssn.kernels import kernel_spectrum

if TYPE_CHECKING:
    from bioattn.ssn.layer import SSNLayer, SSNParams

#: Rates below this (Hz) count as silence when judging the relative change (Euler and Newton).
RATE_FLOOR = 1e-3
#: Local 2×2 blocks with a determinant below this are not inverted: those cells take an Euler
#: step instead (the block is near-singular where a cell's own E loop is close to runaway).
DET_FLOOR = 0.05
#: A perturbation whose norm grows by more than this factor over the second half of the
#: verification steps counts as growing.
GROWTH_TOLERANCE = 1e-3
#: Once every image's relative change is below LAG_BELOW, the local blocks are re-inverted only
#: every REFRESH_EVERY iterations (and whenever a residual grew): the gains then change little
#: from one iteration to the next, and the inverse is only a preconditioner, so a slightly old
#: one changes the path, not the fixed point.
LAG_BELOW = 1e-3
REFRESH_EVERY = 3
#: Seed of the perturbation used by the stability check (deterministic results).
VERIFY_SEED = 1234


def step_factors(p: SSNParams, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dt/τ and 1/τ of the E and I populations, shaped (1, 2, 1, 1, 1) to broadcast over the
    stacked state (N, 2, C, H, W)."""
    alpha = torch.tensor([p.dt / p.tau_e, p.dt / p.tau_i], dtype=like.dtype, device=like.device)
    inv_tau = torch.tensor([1.0 / p.tau_e, 1.0 / p.tau_i], dtype=like.dtype, device=like.device)
    return alpha.view(1, 2, 1, 1, 1), inv_tau.view(1, 2, 1, 1, 1)


def self_weights(layer: SSNLayer, like: torch.Tensor) -> torch.Tensor:
    """(1, 2, 2, C, H, W): folded signed weight c·J_ab·S_eff(k, k)·G_ab(0)/Z_ab(y, x) onto
    population a of each cell from population b of the same cell."""
    p = layer.params
    grid = layer._grid(like.shape[-2], like.shape[-1], like)
    s = layer.effective_similarity(like.dtype, like.device)
    diagonal = (
        torch.ones(layer.channels, dtype=like.dtype, device=like.device)
        if s is None
        else torch.diagonal(s).contiguous()
    )
    inv_z = grid.inv_z  # shared: (1, 2[b], 1, H, W); else (1, 2[a], 2[b], 1, H, W)
    if grid.shared:
        inv_z = inv_z.unsqueeze(1).expand(1, 2, 2, 1, *inv_z.shape[-2:])
    jmat = layer._signed(like, p.k ** (1.0 / p.n)).view(1, 2, 2, 1, 1, 1)
    return jmat * diagonal.view(1, 1, 1, -1, 1, 1) * inv_z


def gain_of(drive: torch.Tensor, n: float) -> torch.Tensor:
    """F′ = n·[x]₊ⁿ⁻¹ of the folded rate function at the folded drive (already rectified);
    0 for silent cells, also for n = 1 (where 0⁰ would give 1)."""
    if n == 2:
        return drive * n
    gain = drive.pow(n - 1) * n
    return gain if n > 1 else torch.where(drive > 0, gain, torch.zeros_like(gain))


def local_inverse(
    gain: torch.Tensor, k_self: torch.Tensor, fallback: torch.Tensor, transpose: bool = False
) -> torch.Tensor:
    """(N, 2, 2, C, H, W): per cell the inverse of 1 − M (or of its transpose),
    M_ab = gain_a · k_self_ab.

    Cells whose block is near-singular (det < :data:`DET_FLOOR`) get ``diag(fallback)`` (an
    Euler step) instead. Written to keep the passes over the state few: this runs on the whole
    state every few iterations.
    """
    g_e, g_i = gain[:, 0], gain[:, 1]
    m_ee, m_ei = g_e * k_self[:, 0, 0], g_e * k_self[:, 0, 1]
    m_ie, m_ii = g_i * k_self[:, 1, 0], g_i * k_self[:, 1, 1]
    # det(1 − M) = (1 − M_EE)(1 − M_II) − M_EI·M_IE
    det = (1.0 - m_ee).mul_(1.0 - m_ii).sub_(m_ei * m_ie)
    usable = det > DET_FLOOR
    inv_det = torch.where(usable, det, torch.ones_like(det)).reciprocal_()
    off_e, off_i = (m_ie, m_ei) if transpose else (m_ei, m_ie)
    inverse = torch.stack(
        [
            torch.stack([(1.0 - m_ii).mul_(inv_det), off_e.mul_(inv_det)], dim=1),
            torch.stack([off_i.mul_(inv_det), (1.0 - m_ee).mul_(inv_det)], dim=1),
        ],
        dim=1,
    )
    if bool(usable.all()):
        return inverse
    euler = torch.zeros_like(inverse)
    euler[:, 0, 0] = fallback[:, 0]
    euler[:, 1, 1] = fallback[:, 1]
    return torch.where(usable.view(usable.shape[0], 1, 1, *usable.shape[1:]), inverse, euler)


def _apply_inverse(inverse: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Per cell, the 2×2 ``inverse`` (N, 2, 2, C, H, W) times ``residual`` (N, 2, C, H, W)."""
    step = inverse[:, :, 0] * residual[:, 0:1]
    return step.addcmul_(inverse[:, :, 1], residual[:, 1:2])


def newton_chunk(
    layer: SSNLayer, hs: torch.Tensor, r: torch.Tensor, out: torch.Tensor
) -> tuple[int, float, torch.Tensor]:
    """Solve the steady state of folded drives ``hs`` (N, 2, C, H, W) from ``r`` (modified).

    Converged images are written into ``out``. Returns (iterations of the slowest converged
    image, its last relative change, indices of the images that did not converge or left the
    finite range; the caller hands those to Euler).
    """
    p = layer.params
    jmat = layer._signed(r, p.k ** (1.0 / p.n))
    k_self = self_weights(layer, r)
    alpha, inv_tau = step_factors(p, r)
    active = torch.arange(r.shape[0], device=r.device)
    failed: list[torch.Tensor] = []
    iterations, relative_done = 0, 0.0
    dims = tuple(range(1, r.ndim))
    # per-image damping: halved whenever an image's residual grew (a Newton step from rest can
    # overshoot far when the power law is steep), grown back towards ``damping`` otherwise
    omega = torch.full((r.shape[0],), float(p.damping), dtype=r.dtype, device=r.device)
    previous = torch.full((r.shape[0],), math.inf, dtype=r.dtype, device=r.device)
    inverse: torch.Tensor | None = None
    for iteration in range(1, int(p.max_iterations) + 1):
        drive = layer._apply_lateral(r, jmat, base=hs).clamp_(min=0.0)
        residual = (drive.square() if p.n == 2 else drive.pow(p.n)).sub_(r)
        top = r.abs().amax(dim=dims)
        relative = (residual.abs() * inv_tau).amax(dim=dims) / top.clamp(min=RATE_FLOOR)
        broken = ~torch.isfinite(relative) | ~torch.isfinite(top) | (top > p.rate_cap)
        done = (relative < p.tol) & ~broken
        if bool(done.any()):
            out[active[done]] = r[done]
            iterations = iteration
            relative_done = max(relative_done, float(relative[done].max()))
        if bool(broken.any()):
            failed.append(active[broken])
        keep = ~(done | broken)
        if not bool(keep.any()):
            active = active[:0]
            break
        if not bool(keep.all()):
            active, r, hs = active[keep], r[keep], hs[keep]
            drive, residual = drive[keep], residual[keep]
            omega, previous, relative = omega[keep], previous[keep], relative[keep]
            if inverse is not None:
                inverse = inverse[keep]
        grew = relative > previous
        omega = torch.where(grew, omega * 0.5, (omega * 1.5).clamp(max=float(p.damping)))
        previous = relative
        # per image (every image of a chunk starts together, so ``iteration`` is its own
        # count): the path of one image never depends on the others
        fallback = alpha.expand(1, 2, *r.shape[2:])
        if inverse is None:
            inverse = local_inverse(gain_of(drive, p.n), k_self, fallback)
        else:
            stale = (relative > LAG_BELOW) | grew
            if iteration % REFRESH_EVERY == 0:
                stale[:] = True
            if bool(stale.all()):
                inverse = local_inverse(gain_of(drive, p.n), k_self, fallback)
            elif bool(stale.any()):
                inverse[stale] = local_inverse(gain_of(drive[stale], p.n), k_self, fallback)
        step = _apply_inverse(inverse, residual)
        r = r.addcmul_(step, omega.view(-1, 1, 1, 1, 1)).clamp_(min=0.0)
    if active.numel():
        failed.append(active)
    lost = torch.cat(failed) if failed else active[:0]
    return iterations, relative_done, lost


def _pattern_weights(layer: SSNLayer) -> list[list[list[float]]]:
    """The signed folded 2×2 weights c·J_ab·λ_ab seen by the two extreme patterns of activity:
    uniform (λ = 1) and the finest, a checkerboard across positions in the least similar
    pattern of maps (λ_ab = (1 − m)·ĝ_ab(π)², the smallest factor the lateral weights give)."""
    p = layer.params
    c = p.k ** (1.0 / p.n)
    signed = (p.weight_matrix() * c).tolist()
    finest = []
    for a, row in enumerate(signed):
        out_row = []
        for b, weight in enumerate(row):
            sigma = getattr(p, f"sigma_{'ei'[a]}{'ei'[b]}")
            spectrum = float(kernel_spectrum(sigma, p.truncate, torch.tensor([math.pi]))[0])
            out_row.append(weight * (1.0 - p.map_mixing) * spectrum**2)
        finest.append(out_row)
    return [signed, finest]


def unstable_images(layer: SSNLayer, hs: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Indices of images whose fixed point ``r`` may be unstable (Euler decides those).

    A root solver converges to an unstable fixed point as readily as to a stable one, so every
    solution is checked, in two stages:

    1. *each cell with its own gains*: the two-population linearisation T⁻¹(−1 + D J_λ) with
       the cell's gains D_E, D_I must have trace < 0 and det > 0, for the weights J_λ of the
       uniform pattern and of the finest one (:func:`_pattern_weights`). Exact for a cell whose
       neighbours share its gains; a strongly driven cell among weakly driven neighbours can
       fail it although the network is stable (a false alarm costs only time).
    2. images with a failing cell get a power iteration of the linearised Euler map
       v ← v + α(−v + D W v), started on the failing cells, over ``verify_periods`` ×
       max(τ_E, τ_I) ms; if the perturbation grows over the second half of that time the
       image counts as unstable (a window long enough to span the slow E–I oscillations an
       unstable focus grows by, and for the slowest decaying mode, τ ≈ 3 τ_E, to have faded).

    Checks that pass are not a proof for every pattern (that would need the rightmost
    eigenvalue of the full Jacobian); ``solver="euler"`` is the reference when in doubt. Each
    image's verdict depends on that image only.
    """
    p = layer.params
    none = torch.zeros(0, dtype=torch.long, device=r.device)
    if r.shape[0] == 0:
        return none
    jmat = layer._signed(r, p.k ** (1.0 / p.n))
    drive = layer._apply_lateral(r, jmat, base=hs).clamp_(min=0.0)
    gain = gain_of(drive, p.n)
    g_e, g_i = gain[:, 0], gain[:, 1]
    failing = torch.zeros_like(g_e, dtype=torch.bool)
    for weights in _pattern_weights(layer):
        m_ee, m_ei = g_e * weights[0][0], g_e * weights[0][1]
        m_ie, m_ii = g_i * weights[1][0], g_i * weights[1][1]
        trace = (m_ee - 1.0) / p.tau_e + (m_ii - 1.0) / p.tau_i
        det = (m_ee - 1.0) * (m_ii - 1.0) - m_ei * m_ie
        failing |= (trace >= 0) | (det <= 0)  # (N, C, H, W)
    suspects = torch.nonzero(failing.flatten(1).any(dim=1)).view(-1)
    if suspects.numel() == 0:
        return none
    gain, failing = gain[suspects], failing[suspects]
    alpha, _inv_tau = step_factors(p, r)
    # one perturbation pattern for every image, so an image's verdict ignores its batch
    generator = torch.Generator(device="cpu").manual_seed(VERIFY_SEED)
    pattern = torch.randn((1, *gain.shape[1:]), generator=generator, dtype=r.dtype)
    v = pattern.to(r.device) * failing.unsqueeze(1)
    dims = tuple(range(1, v.ndim))
    steps = max(4, math.ceil(p.verify_periods * max(p.tau_e, p.tau_i) / p.dt))
    half = steps // 2
    for step in range(1, steps + 1):
        change = (gain * layer._apply_lateral(v, jmat)).sub_(v)
        v = v.addcmul_(change, alpha)
        if step == half:
            v = v / v.square().sum(dim=dims).sqrt().clamp(min=1e-30).view(-1, 1, 1, 1, 1)
    growth = v.square().sum(dim=dims).sqrt()  # over the second half, from norm 1
    grows = ~torch.isfinite(growth) | (growth > 1.0 + GROWTH_TOLERANCE)
    return suspects[grows]


def adjoint_solve(
    layer: SSNLayer, gain: torch.Tensor, g: torch.Tensor
) -> tuple[torch.Tensor | None, float]:
    """u with u = g + Wᵀ D u (D = ``gain``, unfolded W), or ``None`` if it did not converge.

    The same cell-local preconditioner as :func:`newton_chunk`, transposed; a linear iteration,
    so it contracts at the rate the forward solve ended with. Returns (u, relative change).
    """
    p = layer.params
    jmat = layer._signed(g)
    # the local blocks of Wᵀ D in the unfolded weights: k_self / c, since D already carries c
    k_self = self_weights(layer, g) / (p.k ** (1.0 / p.n))
    alpha, inv_tau = step_factors(p, g)
    dims = tuple(range(1, g.ndim))
    u = g.clone()
    relative = math.inf
    # (1 − Wᵀ D) has the local block (1 − D W_self)ᵀ, with D on the rows of W_self; the
    # problem is linear, so one inverse serves every iteration
    inverse = local_inverse(gain, k_self, alpha.expand(1, 2, *g.shape[2:]), transpose=True)
    for _ in range(int(p.max_iterations)):
        residual = layer._apply_lateral_transpose(gain * u, jmat).add_(g).sub_(u)
        top = u.abs().amax(dim=dims).clamp(min=1e-30)
        relative = float(((residual.abs() * inv_tau).amax(dim=dims) / top).max())
        if not math.isfinite(relative):
            return None, relative
        if relative < p.tol:
            return u, relative
        u = u.add_(_apply_inverse(inverse, residual), alpha=p.damping)
    return None, relative
