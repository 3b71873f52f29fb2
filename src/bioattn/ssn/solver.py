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
iteration contracts quickly: 20–35 iterations reach tol = 1e-6 on the default SSN-CNN where
Euler takes 250–300 steps (BENCHMARKS.md). Each iteration costs one lateral operator (as one
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

if TYPE_CHECKING:
    from bioattn.ssn.layer import SSNLayer

#: Local 2×2 blocks with a determinant below this are not inverted: those cells take an Euler
#: step instead (the block is near-singular where a cell's own E loop is close to runaway).
DET_FLOOR = 0.05
#: A perturbation whose norm grows by more than this factor over the second half of the
#: verification steps counts as growing.
GROWTH_TOLERANCE = 1e-3
#: Seed of the perturbation used by the stability check (deterministic results).
VERIFY_SEED = 1234


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


def _gain(drive: torch.Tensor, n: float) -> torch.Tensor:
    """F′ = n·[x]₊ⁿ⁻¹ of the folded rate function at the folded drive (already rectified)."""
    return drive * n if n == 2 else drive.pow(n - 1) * n


def _local_step(
    gain: torch.Tensor,
    k_self: torch.Tensor,
    residual: torch.Tensor,
    fallback: torch.Tensor,
    transpose: bool = False,
) -> torch.Tensor:
    """(1 − M)⁻¹ residual per cell (or (1 − M)⁻ᵀ), M_ab = gain_a · k_self_ab.

    Cells whose block is near-singular (det < :data:`DET_FLOOR`) take ``fallback`` instead.
    Written with in-place operations: this runs once per iteration on the whole state.
    """
    g_e, g_i = gain[:, 0], gain[:, 1]
    a = torch.mul(g_e, k_self[:, 0, 0]).neg_().add_(1.0)  # 1 − M_EE
    d = torch.mul(g_i, k_self[:, 1, 1]).neg_().add_(1.0)  # 1 − M_II
    b = torch.mul(g_e, k_self[:, 0, 1]).neg_()  # −M_EI
    c = torch.mul(g_i, k_self[:, 1, 0]).neg_()  # −M_IE
    if transpose:
        b, c = c, b
    det = torch.mul(a, d).sub_(b * c)
    r_e, r_i = residual[:, 0], residual[:, 1]
    step = torch.stack([d.mul_(r_e).sub_(b.mul_(r_i)), a.mul_(r_i).sub_(c.mul_(r_e))], dim=1)
    usable = det > DET_FLOOR
    if bool(usable.all()):
        return step.div_(det.unsqueeze(1))
    det = torch.where(usable, det, torch.ones_like(det))
    return torch.where(usable.unsqueeze(1), step.div_(det.unsqueeze(1)), fallback)


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
    shape = (1, 2, 1, 1, 1)
    alpha = torch.tensor([p.dt / p.tau_e, p.dt / p.tau_i], dtype=r.dtype, device=r.device)
    alpha = alpha.view(shape)
    inv_tau = torch.tensor([1.0 / p.tau_e, 1.0 / p.tau_i], dtype=r.dtype, device=r.device)
    inv_tau = inv_tau.view(shape)
    active = torch.arange(r.shape[0], device=r.device)
    failed: list[torch.Tensor] = []
    iterations, relative_done = 0, 0.0
    dims = tuple(range(1, r.ndim))
    # per-image damping: halved whenever an image's residual grew (a Newton step from rest can
    # overshoot far when the power law is steep), grown back towards ``damping`` otherwise
    omega = torch.full((r.shape[0],), float(p.damping), dtype=r.dtype, device=r.device)
    previous = torch.full((r.shape[0],), math.inf, dtype=r.dtype, device=r.device)
    for iteration in range(1, int(p.max_iterations) + 1):
        drive = layer._apply_lateral(r, jmat, base=hs).clamp_(min=0.0)
        residual = (drive.square() if p.n == 2 else drive.pow(p.n)).sub_(r)
        top = r.abs().amax(dim=dims)
        relative = (residual.abs() * inv_tau).amax(dim=dims) / top.clamp(min=1e-3)
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
        grew = relative > previous
        omega = torch.where(grew, omega * 0.5, (omega * 1.5).clamp(max=float(p.damping)))
        previous = relative
        step = _local_step(_gain(drive, p.n), k_self, residual, residual * alpha)
        r = r.addcmul_(step, omega.view(-1, 1, 1, 1, 1)).clamp_(min=0.0)
    if active.numel():
        failed.append(active)
    lost = torch.cat(failed) if failed else active[:0]
    return iterations, relative_done, lost


def unstable_images(layer: SSNLayer, hs: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Indices of images whose fixed point ``r`` may be unstable (Euler decides those).

    A root solver converges to an unstable fixed point as readily as to a stable one, so every
    solution is checked, in two stages:

    1. *each cell with its own gains*: the two-population linearisation T⁻¹(−1 + D J) with the
       cell's gains D_E, D_I and the total weights J (exact if its neighbours shared its gains)
       must have trace < 0 and det > 0. This is cheap and conservative: a strongly driven cell
       among weakly driven neighbours can fail it although the network is stable.
    2. images with a failing cell get a power iteration of the linearised Euler map
       v ← v + α(−v + D W v), started on the failing cells, for ``verify_time`` =
       ``verify_periods``·max(τ_E, τ_I) ms; if the perturbation grows over the second half of
       that time the image counts as unstable.

    Checks that pass are not a proof for every pattern (that would need the rightmost
    eigenvalue of the full Jacobian); ``solver="euler"`` is the reference when in doubt.
    """
    p = layer.params
    none = torch.zeros(0, dtype=torch.long, device=r.device)
    if r.shape[0] == 0:
        return none
    jmat = layer._signed(r, p.k ** (1.0 / p.n))
    drive = layer._apply_lateral(r, jmat, base=hs).clamp_(min=0.0)
    gain = _gain(drive, p.n)
    g_e, g_i = gain[:, 0], gain[:, 1]
    m_ee, m_ei = g_e * float(jmat[0, 0]), g_e * float(jmat[0, 1])
    m_ie, m_ii = g_i * float(jmat[1, 0]), g_i * float(jmat[1, 1])
    trace = (m_ee - 1.0) / p.tau_e + (m_ii - 1.0) / p.tau_i
    det = (m_ee - 1.0) * (m_ii - 1.0) - m_ei * m_ie
    failing = (trace >= 0) | (det <= 0)  # (N, C, H, W)
    suspects = torch.nonzero(failing.flatten(1).any(dim=1)).view(-1)
    if suspects.numel() == 0:
        return none
    gain, failing = gain[suspects], failing[suspects]
    alpha = torch.tensor([p.dt / p.tau_e, p.dt / p.tau_i], dtype=r.dtype, device=r.device)
    alpha = alpha.view(1, 2, 1, 1, 1)
    generator = torch.Generator(device="cpu").manual_seed(VERIFY_SEED)
    v = torch.randn(gain.shape, generator=generator, dtype=r.dtype).to(r.device)
    v = v * failing.unsqueeze(1)
    dims = tuple(range(1, v.ndim))
    steps = max(2, math.ceil(p.verify_periods * max(p.tau_e, p.tau_i) / p.dt))
    middle = torch.ones(v.shape[0], dtype=r.dtype, device=r.device)
    for step in range(1, steps + 1):
        change = (gain * layer._apply_lateral(v, jmat)).sub_(v)
        v = v.addcmul_(change, alpha)
        if step == steps // 2:
            middle = v.square().sum(dim=dims).sqrt()
            v = v / middle.clamp(min=1e-30).view(-1, 1, 1, 1, 1)
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
    shape = (1, 2, 1, 1, 1)
    alpha = torch.tensor([p.dt / p.tau_e, p.dt / p.tau_i], dtype=g.dtype, device=g.device)
    alpha = alpha.view(shape)
    inv_tau = torch.tensor([1.0 / p.tau_e, 1.0 / p.tau_i], dtype=g.dtype, device=g.device)
    inv_tau = inv_tau.view(shape)
    dims = tuple(range(1, g.ndim))
    u = g.clone()
    relative = math.inf
    for _ in range(int(p.max_iterations)):
        residual = layer._apply_lateral_transpose(gain * u, jmat).add_(g).sub_(u)
        top = u.abs().amax(dim=dims).clamp(min=1e-30)
        relative = float(((residual.abs() * inv_tau).amax(dim=dims) / top).max())
        if not math.isfinite(relative):
            return None, relative
        if relative < p.tol:
            return u, relative
        # (1 − Wᵀ D) has the local block (1 − D W_self)ᵀ, with D on the rows of W_self
        u = u.add_(
            _local_step(gain, k_self, residual, residual * alpha, transpose=True),
            alpha=p.damping,
        )
    return None, relative
