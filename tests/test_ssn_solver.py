"""The SSN's steady-state solver (issue 16): agreement with Euler, implicit gradients against
backpropagation through Euler, and instability handed to the reference."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from bioattn.errors import ConfigError
from bioattn.ssn import SSNInstabilityError, SSNLayer, SSNParams, ssn_blocks
from tests.conftest import make_image_set

TIGHT = {"tol": 1e-10, "t_max": 20000.0}


def _similarity(channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(channels, 3, generator=generator, dtype=torch.float64)
    return u @ u.T


def _drives(shape: tuple[int, ...], seed: int, scale: float = 20.0) -> torch.Tensor:
    """Drives of 0.5–1.5 × the typical drive, independent from cell to cell (far rougher than
    conv output, whose neighbouring cells are correlated)."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5) * scale


def _stacked(result) -> torch.Tensor:
    return torch.stack([result.r_e, result.r_i], dim=1)


@pytest.mark.parametrize(
    "params",
    [
        SSNParams(**TIGHT),
        SSNParams(sigma_ee=0.9, sigma_ie=0.9, sigma_ei=0.6, sigma_ii=0.7, **TIGHT),
        SSNParams(n=2.5, k=0.01, map_mixing=0.8, input_ratio_i=0.7, **TIGHT),
    ],
    ids=["defaults", "wider-kernels", "n2.5"],
)
def test_newton_finds_the_steady_state_euler_converges_to(params: SSNParams) -> None:
    layer = SSNLayer(3, replace(params, solver="euler"), _similarity(3)).double()
    h_e = _drives((4, 3, 6, 5), seed=1)
    h_i = _drives((4, 3, 6, 5), seed=2)
    euler = layer.steady_state(h_e, h_i)
    layer.params = replace(params, solver="newton")
    newton = layer.steady_state(h_e, h_i)
    assert newton.steps == 0 and newton.handed_to_euler == 0  # the solver alone settled them
    assert 0 < newton.iterations < euler.steps / 4
    torch.testing.assert_close(_stacked(newton), _stacked(euler), rtol=1e-7, atol=1e-7)


def test_newton_converges_from_a_warm_start_in_fewer_iterations() -> None:
    layer = SSNLayer(2, SSNParams(tol=1e-9), _similarity(2)).double()
    h = _drives((2, 2, 5, 5), seed=3)
    cold = layer.steady_state(h, h)
    warm = layer.steady_state(h * 1.05, h * 1.05, initial=(cold.r_e, cold.r_i))
    again = layer.steady_state(h * 1.05, h * 1.05)
    torch.testing.assert_close(_stacked(warm), _stacked(again), rtol=1e-6, atol=1e-7)
    assert warm.iterations < again.iterations


def _unrolled_euler(layer: SSNLayer, h_e: torch.Tensor, h_i: torch.Tensor, steps: int):
    """Steady-state E rates by plain Euler steps written with differentiable torch operations."""
    p = layer.params
    c = p.k ** (1.0 / p.n)
    hs = torch.stack([h_e, h_i], dim=1) * c
    jmat = layer._signed(hs, c)
    alpha = torch.tensor([p.dt / p.tau_e, p.dt / p.tau_i], dtype=hs.dtype).view(1, 2, 1, 1, 1)
    r = torch.zeros_like(hs)
    for _ in range(steps):
        r = r + alpha * (layer._apply_lateral(r, jmat, base=hs).clamp(min=0.0) ** p.n - r)
    return r[:, 0]


def test_implicit_gradient_matches_backprop_through_euler() -> None:
    params = SSNParams(tol=1e-11, t_max=8000.0)
    layer = SSNLayer(2, params, _similarity(2)).double()
    generator = torch.Generator().manual_seed(7)
    x = (torch.rand(1, 2, 4, 4, generator=generator, dtype=torch.float64) * 30).requires_grad_()
    weight = torch.randn(1, 2, 4, 4, generator=generator, dtype=torch.float64)
    (implicit,) = torch.autograd.grad((layer(x) * weight).sum(), x)
    steps = layer.steady_state(x.detach(), x.detach()).iterations
    assert steps > 0  # the implicit gradient came through the Newton solver's adjoint
    layer.params = replace(params, solver="euler")
    euler_steps = layer.steady_state(x.detach(), x.detach()).steps
    (unrolled,) = torch.autograd.grad(
        (_unrolled_euler(layer, x, x, euler_steps + 500) * weight).sum(), x
    )
    torch.testing.assert_close(implicit, unrolled, rtol=1e-6, atol=1e-9)


def test_an_unstable_focus_is_not_returned_as_a_steady_state() -> None:
    # slow inhibition (τ_I = 60 ms ≫ τ_E): the fixed point exists but is an unstable focus
    # (eigenvalues 0.0066 ± 0.025i per ms), so the rates oscillate and grow; a root solver alone
    # would converge to it
    params = SSNParams(tau_e=10.0, tau_i=60.0, dt=0.5, t_max=3000.0)
    layer = SSNLayer(1, params).double()
    h = torch.full((1, 1, 1, 1), 10.0, dtype=torch.float64)
    with pytest.raises(SSNInstabilityError, match="diverged"):
        layer.steady_state(h, h)
    layer.params = replace(params, solver="euler")
    with pytest.raises(SSNInstabilityError, match="diverged"):
        layer.steady_state(h, h)


def test_images_the_solver_cannot_settle_go_to_euler() -> None:
    layer = SSNLayer(2, SSNParams(max_iterations=2), _similarity(2)).double()
    h = _drives((3, 2, 4, 4), seed=5)
    result = layer.steady_state(h, h)
    assert result.handed_to_euler == 3 and result.steps > 0
    layer.params = SSNParams(solver="euler")
    torch.testing.assert_close(_stacked(result), _stacked(layer.steady_state(h, h)))


def test_diverging_rates_raise_with_either_solver() -> None:
    params = SSNParams(n=1.0, k=1.0, j_ee=3.0, j_ei=0.1, j_ie=0.1, j_ii=0.1)
    for solver in ("newton", "euler"):
        layer = SSNLayer(1, replace(params, solver=solver))
        h = torch.full((1, 1, 2, 2), 5.0)
        with pytest.raises(SSNInstabilityError, match="diverged"):
            layer.steady_state(h, h)


def test_solver_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="solver must be one of newton, euler"):
        SSNParams(solver="anderson")
    with pytest.raises(ConfigError, match="damping"):
        SSNParams(damping=1.5)
    with pytest.raises(ConfigError, match="max_iterations"):
        SSNParams(max_iterations=0)


# --- the benchmark's accuracy tables on a tiny SSN-CNN -------------------------------------------
def test_newton_states_are_within_1e_4_of_a_float64_solution(ssn_setup) -> None:
    from bioattn.ssn.convergence import state_accuracy

    _plain, ssn, _detectors, _images = ssn_setup
    images = make_image_set(n_per_category=4).images[:12]
    settings = (("newton", 2.0, 1e-6), ("euler", 2.0, 1e-4))
    table = state_accuracy(ssn, images, settings).set_index(["setting", "layer"])
    newton = table.loc["newton, dt=2 ms, tol=1e-06", "max_relative_state_deviation"]
    loose = table.loc["euler, dt=2 ms, tol=0.0001", "max_relative_state_deviation"]
    assert len(newton) == len(ssn_blocks(ssn)) and (newton < 1e-4).all()
    assert (loose > newton).all()  # the table can tell a looser setting apart


def test_convergence_table_compares_solvers_with_the_reference(ssn_setup, tmp_path) -> None:
    from bioattn.ssn.convergence import run_ssn_convergence

    plain, ssn, _detectors, _images = ssn_setup
    images = make_image_set(n_per_category=4).images[:12]
    settings = (("euler", 1.0, 1e-6), ("newton", 2.0, 1e-6))
    table = run_ssn_convergence(tmp_path, plain, ssn, images, settings, progress=False)
    newton = table[table["solver"] == "newton"].iloc[0]
    assert newton["max_steps"] == 0 and newton["max_iterations"] > 0
    assert newton["images_handed_to_euler"] == 0
    assert newton["max_relative_state_deviation"] < 1e-3
    assert newton["decision_changes"] == 0.0
    assert (tmp_path / "convergence.csv").exists()


def test_each_image_solves_independently_of_its_batch() -> None:
    # mixed drives: some images converge fast, others need more iterations or damping; the
    # solver's choices (damping, when to re-invert) are per image, so results agree to rounding
    # (a shared choice made them differ by 1e-7)
    layer = SSNLayer(3, SSNParams(n=2.5, k=0.01), _similarity(3)).double()
    h = torch.cat([_drives((3, 3, 5, 4), seed=8), 3.0 * _drives((3, 3, 5, 4), seed=9)])
    together = layer.steady_state(h, h * 0.8)
    alone = [layer.steady_state(h[i : i + 1], h[i : i + 1] * 0.8) for i in range(h.shape[0])]
    torch.testing.assert_close(
        _stacked(together), torch.cat([_stacked(a) for a in alone]), rtol=1e-12, atol=1e-12
    )
