"""The SSN layer, the SSN-CNN builder and attention as input current (issue 7)."""

from __future__ import annotations

import copy
import math

import numpy as np
import pandas as pd
import pytest
import torch
import xarray as xr
from scipy.optimize import fsolve

from bioattn.attention.gains import Modulation, feature_gain, modulate
from bioattn.attention.rules import ValueSource, parse_rule
from bioattn.attention.values import empty_values, tuning_values
from bioattn.errors import BioattnError, ConfigError, LayerError
from bioattn.experiments.sweep import (
    PERFORMANCE_COLUMNS,
    SweepConfig,
    run_sweep,
)
from bioattn.models.hooks import record_map_means
from bioattn.ssn import (
    SSNInstabilityError,
    SSNLayer,
    SSNParams,
    build_ssn_network,
    conv_output,
    ssn_attention,
    ssn_blocks,
    ssn_layer,
    tuning_similarity,
)
from bioattn.ssn.experiments import CurrentAttention, run_ssn_sweep
from tests.conftest import make_image_set

FAST = {"tol": 1e-7, "t_max": 3000.0}


def _psd_similarity(channels: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(channels, 3, generator=generator, dtype=torch.float64)
    return u @ u.T


def _two_population_fixed_point(params: SSNParams, h_e: float, h_i: float) -> np.ndarray:
    """Solve r = k[h + W r]₊ⁿ for the 2×2 SSN with scipy (independent of the layer's code)."""
    w = np.array([[params.j_ee, -params.j_ei], [params.j_ie, -params.j_ii]])
    h = np.array([h_e, h_i])

    def residual(r: np.ndarray) -> np.ndarray:
        return r - params.k * np.maximum(h + w @ r, 0.0) ** params.n

    guess = params.k * np.maximum(h, 0.0) ** params.n
    for start in (guess, np.array([20.0, 30.0]), np.array([60.0, 120.0])):
        solution, _info, ok, _msg = fsolve(residual, start, full_output=True, xtol=1e-13)
        if ok == 1 and np.all(solution >= 0) and np.abs(residual(solution)).max() < 1e-9:
            return solution
    raise AssertionError("scipy found no fixed point")


# --- the SSN layer -------------------------------------------------------------------------------
@pytest.mark.parametrize("drive", [2.0, 15.0, 40.0, 120.0])
def test_two_population_ssn_converges_to_the_fixed_point(drive: float) -> None:
    params = SSNParams(**FAST)
    layer = SSNLayer(1, params).double()
    h = torch.full((1, 1, 1, 1), drive, dtype=torch.float64)
    result = layer.steady_state(h, h * 0.8)
    expected = _two_population_fixed_point(params, drive, 0.8 * drive)
    got = np.array([float(result.r_e), float(result.r_i)])
    np.testing.assert_allclose(got, expected, rtol=2e-5)
    assert result.relative_change < params.tol


def test_linear_ssn_matches_the_analytic_fixed_point() -> None:
    # n = 1 and drives that keep every input positive: r = (1 − kW)⁻¹ k h exactly
    params = SSNParams(n=1.0, k=0.3, j_ee=1.0, j_ei=1.5, j_ie=1.2, j_ii=0.8, **FAST)
    layer = SSNLayer(1, params).double()
    h = torch.tensor([30.0, 25.0], dtype=torch.float64)
    result = layer.steady_state(h[0].view(1, 1, 1, 1), h[1].view(1, 1, 1, 1))
    w = params.weight_matrix()
    expected = torch.linalg.solve(torch.eye(2, dtype=torch.float64) - params.k * w, params.k * h)
    got = torch.stack([result.r_e.view(()), result.r_i.view(())])
    assert torch.all(h + w @ expected > 0)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)


def test_uniform_drive_on_a_grid_gives_the_two_population_rates() -> None:
    # spatial weights sum to 1 everywhere (borders included) and similarity rows sum to 1, so
    # a uniform input behaves like the two-population SSN at every cell
    params = SSNParams(**FAST)
    layer = SSNLayer(3, params, _psd_similarity(3)).double()
    h = torch.full((2, 3, 5, 4), 25.0, dtype=torch.float64)
    result = layer.steady_state(h, h)
    expected = _two_population_fixed_point(params, 25.0, 25.0)
    np.testing.assert_allclose(result.r_e.numpy(), expected[0], rtol=2e-5)
    np.testing.assert_allclose(result.r_i.numpy(), expected[1], rtol=2e-5)


def test_each_image_converges_independently_of_its_batch() -> None:
    layer = SSNLayer(2, SSNParams()).double()
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(5, 2, 6, 6, generator=generator, dtype=torch.float64) * 3
    layer.set_scales(drive_scale=10.0)
    together = layer.simulate(x).r_e
    alone = torch.cat([layer.simulate(x[i : i + 1]).r_e for i in range(5)])
    torch.testing.assert_close(together, alone, rtol=1e-12, atol=1e-12)


def test_time_course_starts_at_rest_and_ends_at_the_steady_state() -> None:
    layer = SSNLayer(1, SSNParams())
    h = torch.full((1, 1, 3, 3), 20.0)
    result = layer.steady_state(h, h, return_trace=True)
    assert result.trace_e is not None and result.trace_i is not None and result.times is not None
    assert result.trace_e.shape == (result.steps + 1, 1, 1, 3, 3)
    assert float(result.trace_e[0].abs().max()) == 0.0
    torch.testing.assert_close(result.trace_e[-1], result.r_e)
    assert float(result.times[-1]) == pytest.approx(result.time_ms)


# --- lateral weights ----------------------------------------------------------------------------
def _explicit_lateral(
    layer: SSNLayer, r_e: torch.Tensor, r_i: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Σ over every source cell of J_ab · S(k, k') · G(Δy) G(Δx) / Z(y, x), by loops."""
    p = layer.params
    s0 = layer.similarity.to(torch.float64)
    s = (1 - p.map_mixing) * torch.eye(layer.channels, dtype=torch.float64) + p.map_mixing * s0
    _n, _c, h, w = r_e.shape

    def gauss(d: int, sigma: float) -> float:
        if sigma == 0:
            return float(d == 0)
        return math.exp(-(d**2) / (2 * sigma**2)) if abs(d) <= math.ceil(3 * sigma) else 0.0

    def pathway(rates: torch.Tensor, j: float, sigma: float) -> torch.Tensor:
        out = torch.zeros_like(rates)
        for y in range(h):
            for x in range(w):
                weights = torch.tensor(
                    [
                        [gauss(y - yy, sigma) * gauss(x - xx, sigma) for xx in range(w)]
                        for yy in range(h)
                    ],
                    dtype=torch.float64,
                )
                weights = weights / weights.sum()
                seen = (rates * weights).sum(dim=(2, 3))  # (N, C): blurred rate of each map at y, x
                out[:, :, y, x] = j * seen @ s.T
        return out

    lat_e = pathway(r_e, p.j_ee, p.sigma_ee) - pathway(r_i, p.j_ei, p.sigma_ei)
    lat_i = pathway(r_e, p.j_ie, p.sigma_ie) - pathway(r_i, p.j_ii, p.sigma_ii)
    return lat_e, lat_i


@pytest.mark.parametrize(
    "params",
    [
        SSNParams(),
        SSNParams(sigma_ee=0.9, sigma_ie=0.9, sigma_ei=0.6, sigma_ii=0.7, map_mixing=0.3),
        SSNParams(sigma_ee=0.0, sigma_ie=0.0, sigma_ei=0.0, sigma_ii=0.0),
    ],
    ids=["default", "four-widths", "no-spread"],
)
def test_convolutional_lateral_weights_equal_the_dense_computation(params: SSNParams) -> None:
    layer = SSNLayer(3, params, _psd_similarity(3, seed=2)).double()
    generator = torch.Generator().manual_seed(1)
    r_e = torch.rand(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    r_i = torch.rand(2, 3, 5, 4, generator=generator, dtype=torch.float64)
    lat_e, lat_i = layer.lateral_input(r_e, r_i)
    want_e, want_i = _explicit_lateral(layer, r_e, r_i)
    torch.testing.assert_close(lat_e, want_e, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lat_i, want_i, rtol=1e-12, atol=1e-12)
    # the dense matrices the layer reports describe the same operator
    signed = layer.signed_weight_matrix(5, 4)
    flat = torch.cat([r_e.reshape(2, -1), r_i.reshape(2, -1)], dim=1) @ signed.T
    torch.testing.assert_close(flat, torch.cat([want_e.reshape(2, -1), want_i.reshape(2, -1)], 1))


@pytest.mark.parametrize(
    "params",
    [SSNParams(), SSNParams(sigma_ee=0.9, sigma_ie=0.9, sigma_ei=0.6, sigma_ii=0.7)],
    ids=["default", "four-widths"],
)
def test_dales_law_holds_for_every_weight(params: SSNParams) -> None:
    layer = SSNLayer(4, params, _psd_similarity(4, seed=3))
    signed = layer.signed_weight_matrix(4, 3)
    n = 4 * 4 * 3
    from_e, from_i = signed[:, :n], signed[:, n:]
    assert bool((from_e >= 0).all()), "an E cell inhibits"
    assert bool((from_i <= 0).all()), "an I cell excites"
    assert float(from_e.abs().sum()) > 0 and float(from_i.abs().sum()) > 0
    for block in layer.dense_weights(4, 3).values():
        assert bool((block >= 0).all())


def _operator_matrix(layer: SSNLayer, height: int, width: int) -> torch.Tensor:
    """The signed (2CHW, 2CHW) matrix of the convolutional lateral operator, found by probing it
    with one active cell at a time (column j: the input every cell gets from cell j)."""
    units = layer.channels * height * width
    probes = torch.eye(2 * units, dtype=torch.float64).view(
        2 * units, 2, layer.channels, height, width
    )
    lat_e, lat_i = layer.lateral_input(probes[:, 0], probes[:, 1])
    return torch.cat([lat_e.reshape(2 * units, -1), lat_i.reshape(2 * units, -1)], dim=1).T


def _assert_dale(signed: torch.Tensor) -> None:
    units = signed.shape[1] // 2
    from_e, from_i = signed[:, :units], signed[:, units:]
    assert bool((from_e >= 0).all()), "an E cell inhibits"
    assert bool((from_i <= 0).all()), "an I cell excites"
    assert float(from_e.sum()) > 0 and float(from_i.sum()) < 0


@pytest.mark.parametrize(
    "params",
    [SSNParams(), SSNParams(sigma_ee=0.9, sigma_ie=0.9, sigma_ei=0.6, sigma_ii=0.7)],
    ids=["default", "four-widths"],
)
def test_dales_law_holds_for_the_convolutional_operator(params: SSNParams) -> None:
    # the weights the integration really uses, not the dense matrices built for checks
    layer = SSNLayer(3, params, _psd_similarity(3, seed=5)).double()
    signed = _operator_matrix(layer, 4, 3)
    _assert_dale(signed)
    torch.testing.assert_close(signed, layer.signed_weight_matrix(4, 3))


def test_dales_law_holds_in_every_layer_of_the_ssn_cnn(ssn_setup) -> None:
    _plain, ssn, _detectors, _images = ssn_setup
    for alias, block in ssn_blocks(ssn).items():
        layer = copy.deepcopy(block.ssn).double()
        assert not torch.equal(layer.similarity, torch.eye(layer.channels, dtype=torch.float64)), (
            f"{alias}: the tuning similarity was not used"
        )
        _assert_dale(_operator_matrix(layer, 3, 3))


def test_negative_weights_and_similarities_are_refused() -> None:
    with pytest.raises(ConfigError, match="j_ei"):
        SSNParams(j_ei=-0.1)
    layer = SSNLayer(2)
    with pytest.raises(ConfigError, match=">= 0"):
        layer.set_similarity(torch.tensor([[1.0, -0.5], [-0.5, 1.0]]))


def test_adjoint_is_the_transpose_of_the_lateral_operator() -> None:
    params = SSNParams(sigma_ee=0.9, sigma_ie=0.9, sigma_ei=0.6, sigma_ii=0.7)
    for layer in (SSNLayer(3, params, _psd_similarity(3)), SSNLayer(3, SSNParams())):
        layer = layer.double()
        generator = torch.Generator().manual_seed(4)
        r = torch.rand(2, 2, 3, 6, 5, generator=generator, dtype=torch.float64)
        p = torch.rand(2, 2, 3, 6, 5, generator=generator, dtype=torch.float64)
        j = layer.params.weight_matrix()
        lhs = (layer._apply_lateral(r, j) * p).sum()
        rhs = (r * layer._apply_lateral_transpose(p, j)).sum()
        assert float(lhs) == pytest.approx(float(rhs), rel=1e-12)


def test_steady_state_gradient_matches_finite_differences() -> None:
    layer = SSNLayer(3, SSNParams(tol=1e-11, t_max=5000.0), _psd_similarity(3)).double()
    layer.set_scales(drive_scale=20.0)
    generator = torch.Generator().manual_seed(5)
    x = (torch.randn(1, 3, 4, 4, generator=generator, dtype=torch.float64) + 0.8).requires_grad_()
    weight = torch.randn(1, 3, 4, 4, generator=generator, dtype=torch.float64)
    (grad,) = torch.autograd.grad((layer(x) * weight).sum(), x)
    eps = 1e-5
    with torch.no_grad():
        for index in [(0, 0, 0, 0), (0, 2, 3, 1), (0, 1, 2, 2)]:
            up, down = x.detach().clone(), x.detach().clone()
            up[index] += eps
            down[index] -= eps
            numeric = ((layer(up) - layer(down)) * weight).sum() / (2 * eps)
            assert float(grad[index]) == pytest.approx(float(numeric), rel=1e-5, abs=1e-7)


# --- instability --------------------------------------------------------------------------------
def test_weights_without_dominant_inhibition_raise_the_documented_error() -> None:
    with pytest.raises(SSNInstabilityError, match=r"J_EI·J_IE > J_EE·J_II") as info:
        SSNParams(j_ee=2.0, j_ei=0.5, j_ie=1.0, j_ii=1.0)
    assert isinstance(info.value, BioattnError)
    assert "j_ee" in str(info.value)


def test_widths_that_destabilise_a_spatial_pattern_are_refused() -> None:
    with pytest.raises(SSNInstabilityError, match="spatial frequency"):
        SSNParams(sigma_ee=0.5, sigma_ie=1.5, sigma_ei=0.3, sigma_ii=0.3)


def test_similarity_with_negative_eigenvalues_is_refused() -> None:
    # non-negative but not positive semi-definite: the sign of a pattern across maps flips
    layer = SSNLayer(2)
    with pytest.raises(SSNInstabilityError, match="eigenvalue"):
        layer.set_similarity(torch.tensor([[0.1, 1.0], [1.0, 0.1]]))


def test_diverging_rates_raise_instead_of_returning_nan() -> None:
    # linear (n = 1) and excitation-dominated: k·J_EE > 1 makes the rates grow without bound
    params = SSNParams(n=1.0, k=1.0, j_ee=3.0, j_ei=0.1, j_ie=0.1, j_ii=0.1)
    layer = SSNLayer(1, params)
    h = torch.full((1, 1, 2, 2), 5.0)
    with pytest.raises(SSNInstabilityError, match="diverged") as info:
        layer.steady_state(h, h)
    message = str(info.value)
    assert "J_EE=3" in message and "rate_cap" in message


def test_non_finite_drive_raises() -> None:
    layer = SSNLayer(1)
    h = torch.full((1, 1, 2, 2), float("nan"))
    with pytest.raises(SSNInstabilityError, match="diverged"):
        layer.steady_state(h, h)


@pytest.mark.parametrize("solver", ["euler", "newton"])
def test_no_convergence_within_t_max_raises(solver: str) -> None:
    # Newton gets one iteration, so it hands the image to Euler, which runs out of time
    layer = SSNLayer(1, SSNParams(t_max=20.0, solver=solver, max_iterations=1))
    h = torch.full((1, 1, 2, 2), 15.0)
    with pytest.raises(SSNInstabilityError, match=r"no steady state.*t_max"):
        layer.steady_state(h, h)


# --- the SSN-CNN ----------------------------------------------------------------------------------
def test_builder_keeps_the_layers_and_leaves_the_original_alone(ssn_setup) -> None:
    plain, ssn, _detectors, _images = ssn_setup
    assert [(la.alias, la.conv, la.channels) for la in ssn.layers] == [
        (la.alias, la.conv, la.channels) for la in plain.layers
    ]
    assert [la.name for la in ssn.layers] == [la.name for la in plain.layers]
    assert {la.kind for la in ssn.layers} == {"SSN"}
    assert set(ssn_blocks(ssn)) == {"conv1_1", "conv2_1"}
    assert all(isinstance(plain.submodule(la.activation), torch.nn.ReLU) for la in plain.layers)
    assert not ssn_blocks(plain)
    with pytest.raises(LayerError, match="no SSN"):
        ssn_layer(plain, "conv1_1")


def test_rescaling_matches_the_original_mean_activity(ssn_setup) -> None:
    plain, ssn, _detectors, images = ssn_setup
    first = plain.layers[0]  # the first SSN sees exactly the original conv output
    want = record_map_means(plain, images.images, [first])[first.alias].mean(0)
    got = record_map_means(ssn, images.images, [first])[first.alias].mean(0)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)
    block = ssn_blocks(ssn)["conv1_1"].ssn
    assert float(block.drive_scale) > 0


def test_subset_of_layers_and_vgg16(tiny_network) -> None:
    ssn = build_ssn_network(tiny_network, ["conv2_1"])
    assert set(ssn_blocks(ssn)) == {"conv2_1"}
    with pytest.raises(LayerError, match="conv1_1"):
        ssn_layer(ssn, "conv1_1").params  # noqa: B018
    from bioattn.models.network import Network
    from bioattn.models.zoo import VGG16

    with torch.device("meta"):
        module = VGG16()
    vgg = Network(module, "vgg16", "classifier.6", (0.5,) * 3, (0.5,) * 3)
    vgg_ssn = build_ssn_network(vgg, ["conv1_1", "conv5_3"])
    assert set(ssn_blocks(vgg_ssn)) == {"conv1_1", "conv5_3"}
    assert [la.channels for la in vgg_ssn.layers] == [la.channels for la in vgg.layers]
    assert vgg_ssn.resolve_layer("conv5_3").activation == "features.29"


def test_attention_current_changes_the_output_and_is_restored(ssn_setup) -> None:
    _plain, ssn, _detectors, images = ssn_setup
    before = ssn.readout_features(images.images[:6])
    current = torch.tensor([5.0, -5.0])
    with ssn_attention(ssn, {"conv1_1": (current, current)}):
        during = ssn.readout_features(images.images[:6])
    after = ssn.readout_features(images.images[:6])
    assert not torch.allclose(before, during)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    with (
        pytest.raises(ConfigError, match="one value per feature map"),
        ssn_attention(ssn, {"conv1_1": (torch.ones(5), None)}),
    ):
        pass


def _random_values(network, categories, seed: int) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    values = empty_values(network, categories)
    shape = (len(categories), values.sizes["unit"])
    values["tuning"] = (("category", "unit"), rng.normal(size=shape).astype(np.float32))
    values["gradient_merged"] = (("category", "unit"), rng.uniform(-1, 1, shape).astype(np.float32))
    values["mean_activity"] = (("category", "unit"), rng.uniform(0, 1, shape).astype(np.float32))
    return values


def test_zero_attention_input_does_not_depend_on_the_values(ssn_setup) -> None:
    _plain, ssn, detectors, _images = ssn_setup
    test = make_image_set(n_per_category=6, split="test")
    images = test.images[::3]
    rule = parse_rule("gradient")

    def outputs(values: xr.Dataset, beta: float) -> torch.Tensor:
        # currents from these values into every SSN layer at once, E and I cells
        currents = {
            layer: CurrentAttention().currents(
                ssn_layer(ssn, layer), rule.vector(ValueSource(values), "merged", "a", layer), beta
            )
            for layer in ssn.layers
        }
        with ssn_attention(ssn, currents):
            return ssn(ssn.preprocess(images)).detach()

    loaded = [_random_values(ssn, detectors.categories, seed) for seed in (0, 1)]
    unattended = ssn(ssn.preprocess(images)).detach()
    # with attention input 0 the outputs are exactly those of the unattended network...
    for values in loaded:
        torch.testing.assert_close(outputs(values, 0.0), unattended, rtol=0, atol=0)
    # ...while with input they depend on the values (so the check above can fail)
    assert not torch.allclose(outputs(loaded[0], 0.1), outputs(loaded[1], 0.1))
    # the sweep's β = 0 rows likewise
    config = SweepConfig(
        image_types=("merged",),
        categories=("a",),
        layers=("conv2_1",),
        all_layers=False,
        methods=("gradient",),
        betas=(0.0, 0.1),
        n_pos=4,
        n_neg=4,
    )
    tables = [run_ssn_sweep(ssn, detectors, v, test, config, progress=False) for v in loaded]
    assert list(tables[0].columns) == PERFORMANCE_COLUMNS
    assert sorted(tables[0]["beta"]) == [0.0, 0.1]
    zero = [t.loc[t["beta"] == 0].reset_index(drop=True) for t in tables]
    pd.testing.assert_frame_equal(zero[0], zero[1])


def test_plain_sweep_and_modulation_work_on_the_ssn_cnn(ssn_setup) -> None:
    _plain, ssn, detectors, images = ssn_setup
    values = tuning_values(ssn, images)
    values["gradient_merged"] = values["tuning"] / 3
    test = make_image_set(n_per_category=10, split="test")
    config = SweepConfig(
        image_types=("merged",),
        categories=("a", "c"),
        methods=("gradient",),
        betas=(0.0, 1.0),
        n_pos=6,
        n_neg=6,
    )
    batched = run_sweep(ssn, detectors, values, test, config, progress=False)
    naive = run_sweep(ssn, detectors, values, test, config, progress=False, engine="naive")
    assert list(batched.columns) == PERFORMANCE_COLUMNS
    np.testing.assert_allclose(batched["performance"], naive["performance"])
    # the hook sits after the SSN: doubling the last SSN layer doubles the pooled features
    gain = feature_gain(torch.ones(3), beta=1.0)
    with modulate(ssn, {"conv2_1": Modulation(scale=gain)}):
        changed = ssn.readout_features(images.images[:4])
    torch.testing.assert_close(changed, 2 * ssn.readout_features(images.images[:4]))


def test_ssn_sweep_refuses_response_methods_and_plain_layers(ssn_setup, tiny_network) -> None:
    _plain, ssn, detectors, _images = ssn_setup
    values = _random_values(ssn, detectors.categories, 0)
    test = make_image_set(n_per_category=10, split="test")
    with pytest.raises(ConfigError, match="already additive"):
        run_ssn_sweep(
            ssn, detectors, values, test, SweepConfig(methods=("response-tuning",)), progress=False
        )
    partial = build_ssn_network(tiny_network, ["conv2_1"])
    with pytest.raises(LayerError, match="no SSN"):
        run_ssn_sweep(
            partial,
            detectors,
            _random_values(partial, detectors.categories, 0),
            test,
            SweepConfig(image_types=("merged",), layers=("conv1_1",)),
            progress=False,
        )


def test_tuning_similarity_is_non_negative_and_positive_semi_definite(tiny_network) -> None:
    values = tuning_values(tiny_network, make_image_set())
    for layer in tiny_network.layers:
        s = tuning_similarity(values, layer)
        assert s.shape == (layer.channels, layer.channels)
        assert bool((s >= 0).all())
        torch.testing.assert_close(torch.diagonal(s), torch.ones(layer.channels, dtype=s.dtype))
        assert float(torch.linalg.eigvalsh(s).min()) > -1e-9


def test_conv_output_is_what_feeds_the_ssn(ssn_setup) -> None:
    plain, ssn, _detectors, images = ssn_setup
    x = conv_output(ssn, "conv2_1", images.images[:5], batch_size=2)
    seen: list[torch.Tensor] = []
    handle = ssn_blocks(ssn)["conv2_1"].ssn.register_forward_pre_hook(
        lambda _m, inputs: seen.append(inputs[0])
    )
    try:
        with torch.no_grad():
            ssn(ssn.preprocess(images.images[:5]))
    finally:
        handle.remove()
    torch.testing.assert_close(x, seen[0])
    # before the first SSN the plain network and the SSN-CNN agree
    first = conv_output(plain, "conv1_1", images.images[:5])
    torch.testing.assert_close(first, conv_output(ssn, "conv1_1", images.images[:5]))


# --- the command line -----------------------------------------------------------------------------
def test_cli_refuses_unstable_ssn_parameters_with_a_clear_message(tmp_path, capsys) -> None:
    from bioattn.cli import main

    assert main(["ssn", "signatures", str(tmp_path / "out"), "--param", "j_ee=3"]) == 2
    message = capsys.readouterr().err
    assert message.startswith("bioattn ssn: error:")
    assert "J_EI·J_IE > J_EE·J_II" in message and "J_EE=3" in message
    assert not (tmp_path / "out").exists()
    assert main(["ssn", "benchmark", str(tmp_path), "--param", "jee=1"]) == 2
    assert "j_ee" in capsys.readouterr().err  # the valid names are listed
    assert main(["ssn", "replicate", str(tmp_path), "--param", "dt=fast"]) == 2
    assert "not a number" in capsys.readouterr().err


def test_groups_whose_chosen_beta_failed_on_the_test_images_are_found() -> None:
    from bioattn.ssn.experiments import _lost_groups

    rows = [
        {"image_type": "merged", "category": "Bag", "layer": "conv1_1", "method": m, "beta": b}
        for m, b in (("tuning", 0.0), ("tuning", 0.1), ("gradient", 0.0))
    ]
    chosen = {
        ("merged", "Bag", "conv1_1", "tuning"): 0.1,
        ("merged", "Bag", "conv1_1", "gradient"): 0.4,  # its β = 0.4 row failed
    }
    assert _lost_groups(chosen, pd.DataFrame(rows)) == {("merged", "Bag", "conv1_1", "gradient")}
