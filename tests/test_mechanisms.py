"""Attention mechanisms from machine learning (RAM, soft spatial, dasNet, optimal gains) and the
comparison with FSGM, on tiny networks and images with tiny training budgets."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from bioattn.attention.values import compute_values
from bioattn.data.clutter import crop_windows, make_cluttered, paste_windows
from bioattn.data.imageset import ImageSet
from bioattn.errors import CategoryError, ConfigError, DataError, LayerError
from bioattn.mechanisms.common import (
    FreshTasks,
    cued_logits,
    cued_set,
    holdout_split,
    per_category_performance,
    training_pool,
)
from bioattn.mechanisms.compare import (
    MECHANISMS,
    OVERT_COVERT,
    CompareConfig,
    compare_mechanisms,
)
from bioattn.mechanisms.dasnet import FeedbackPolicy, dasnet_pass, train_dasnet_snes
from bioattn.mechanisms.glimpse import glimpse_sensor, location_to_pixels
from bioattn.mechanisms.optimal import optimise_gains
from bioattn.mechanisms.ram import (
    RAMConfig,
    RecurrentAttentionModel,
    location_log_prob,
    reinforce_loss,
    train_ram,
)
from bioattn.mechanisms.snes import (
    SearchDistribution,
    default_population,
    rank_utilities,
    snes_step,
)
from bioattn.mechanisms.soft_spatial import (
    SoftSpatialAttention,
    soft_spatial_logits,
    train_soft_spatial,
)
from bioattn.mechanisms.training import Budget, RunOptions
from bioattn.models.detectors import fit_detectors
from bioattn.models.network import Network
from tests.conftest import make_tiny_network

CATEGORIES = ("a", "b", "c", "d", "e")
TINY_RAM = RAMConfig(patch=2, n_scales=2, n_glimpses=2, glimpse_hidden=8, hidden=8)


def five_categories(n_per_category: int = 16, split: str = "train", seed: int = 3) -> ImageSet:
    """Five categories of 8×8 images, each a bright bar at its own place, plus noise."""
    generator = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for k in range(5):
        base = torch.zeros(1, 8, 8)
        base[:, k : k + 3, :] = 0.5
        base[:, :, (2 * k) % 8 : (2 * k) % 8 + 2] += 0.5
        noise = 0.15 * torch.rand(n_per_category, 1, 8, 8, generator=generator)
        images.append((base + noise).clamp(0, 1))
        labels.append(torch.full((n_per_category,), k))
    return ImageSet(torch.cat(images), torch.cat(labels), CATEGORIES, split)


@pytest.fixture(scope="module")
def setup() -> tuple[Network, object, ImageSet, ImageSet]:
    network = make_tiny_network(5)  # seed 5: every map is active on these images
    train, test = five_categories(), five_categories(split="test", seed=4)
    detectors = fit_detectors(network.readout_features(train.images), train.labels, CATEGORIES)
    return network, detectors, train, test


# --- stimuli and glimpses ---------------------------------------------------------------------
def test_glimpse_patches_equal_explicit_slicing() -> None:
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(4, 2, 20, 24, generator=generator)
    locations = torch.tensor([[-1.0, -1.0], [1.0, 1.0], [0.0, 0.3], [-0.4, 0.9]])
    patch, n_scales = 3, 3
    glimpses = glimpse_sensor(images, locations, patch=patch, n_scales=n_scales)
    assert glimpses.shape == (4, n_scales, 2, patch, patch)
    centres = location_to_pixels(locations, 20, 24)
    assert centres[0].tolist() == [0, 0] and centres[1].tolist() == [19, 23]
    margin = 20
    padded = F.pad(images, (margin,) * 4)
    for i in range(4):
        for scale in range(n_scales):
            size = patch * 2**scale
            top = int(centres[i, 0]) - size // 2 + margin
            left = int(centres[i, 1]) - size // 2 + margin
            window = padded[i : i + 1, :, top : top + size, left : left + size]
            expected = F.avg_pool2d(window, 2**scale)[0]
            torch.testing.assert_close(glimpses[i, scale], expected)


def test_crop_and_paste_windows_and_bad_windows() -> None:
    images = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).reshape(2, 1, 6, 6)
    rows, cols = torch.tensor([0, 3]), torch.tensor([2, 1])
    crops = crop_windows(images, rows, cols, 3, 2)
    torch.testing.assert_close(crops[1], images[1, :, 3:6, 1:3])
    pasted = paste_windows(torch.zeros(2, 1, 6, 6), crops, rows, cols)
    torch.testing.assert_close(pasted[0, :, 0:3, 2:4], images[0, :, 0:3, 2:4])
    assert float(pasted[0].sum()) == float(crops[0].sum())
    with pytest.raises(ValueError, match="outside"):
        crop_windows(images, torch.tensor([4, 0]), cols, 3, 2)


def test_cluttered_images_are_deterministic_and_hold_the_object() -> None:
    source = five_categories(4)
    a = make_cluttered(source, 10, size=20, n_clutter=3, clutter_size=3, seed=5)
    b = make_cluttered(source, 10, size=20, n_clutter=3, clutter_size=3, seed=5)
    c = make_cluttered(source, 10, size=20, n_clutter=3, clutter_size=3, seed=6)
    assert a.images.shape == (10, 1, 20, 20)
    torch.testing.assert_close(a.images, b.images)
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    # without clutter each canvas holds exactly one whole source image of its label
    plain = make_cluttered(source, 10, size=20, n_clutter=0, seed=5)
    sums = source.images.flatten(1).sum(1)
    for image, label in zip(plain.images, plain.labels, strict=True):
        same = (sums - image.sum()).abs() < 1e-4
        assert bool(same.any()) and bool((source.labels[same] == label).all())
    with pytest.raises(ConfigError, match="size"):
        make_cluttered(source, 10, size=6)
    with pytest.raises(ConfigError, match="clutter_size"):
        make_cluttered(source, 10, size=20, clutter_size=9)
    with pytest.raises(ConfigError, match="n must be"):
        make_cluttered(source, 0)


# --- REINFORCE --------------------------------------------------------------------------------
def test_reinforce_gradient_sign_on_a_toy_problem() -> None:
    """Actions above the policy mean earn reward: descending the loss must raise the mean."""
    generator = torch.Generator().manual_seed(0)
    mean = torch.zeros(2, requires_grad=True)
    std = 0.2
    locations = (mean.detach() + std * torch.randn(4000, 2, generator=generator)).clamp(-1, 1)
    rewards = (locations[:, 0] > 0).float()
    log_probs = location_log_prob(mean.expand(4000, 2), locations, std).unsqueeze(1)
    loss = reinforce_loss(log_probs, rewards, torch.full((4000, 1), 0.5))
    (grad,) = torch.autograd.grad(loss, mean, retain_graph=True)
    assert grad[0] < 0  # gradient descent increases mean[0], towards the reward
    assert abs(float(grad[1])) < abs(float(grad[0])) / 5  # reward does not depend on column
    # a baseline equal to the reward leaves nothing to learn
    same = reinforce_loss(log_probs, rewards, rewards.view(-1, 1))
    (zero,) = torch.autograd.grad(same, mean)
    assert torch.count_nonzero(zero) == 0


def test_reinforce_training_moves_the_policy_to_the_reward() -> None:
    mean = torch.zeros(2, requires_grad=True)
    optimizer = torch.optim.SGD([mean], lr=0.05)
    for step in range(60):
        generator = torch.Generator().manual_seed(step)
        locations = (mean.detach() + 0.3 * torch.randn(256, 2, generator=generator)).clamp(-1, 1)
        rewards = (locations[:, 1] > 0.4).float()
        log_probs = location_log_prob(mean.expand(256, 2), locations, 0.3).unsqueeze(1)
        loss = reinforce_loss(log_probs, rewards, rewards.mean().expand(256, 1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(mean.detach()[1]) > 0.3


def test_ram_shapes_and_cue_check(setup) -> None:
    _network, _detectors, train, _test = setup
    model = RecurrentAttentionModel(1, 5, 5, TINY_RAM)
    out = model(train.images[:6], train.labels[:6], torch.Generator().manual_seed(0))
    assert out.logits.shape == (6, 5)
    assert out.locations.shape == (6, 2, 2)
    assert out.log_probs.shape == out.baselines.shape == (6, 2)
    assert float(out.locations.abs().max()) <= 1.0
    with pytest.raises(ConfigError, match="cue"):
        model(train.images[:6])


# --- soft spatial attention -------------------------------------------------------------------
def test_soft_attention_weights_sum_to_one() -> None:
    torch.manual_seed(0)
    attention = SoftSpatialAttention(channels=3, n_categories=5, hidden=4)
    with torch.no_grad():
        attention.score.normal_()  # non-uniform weights
    activity = torch.rand(7, 3, 5, 6)
    weights = attention(activity, torch.tensor([0, 1, 2, 3, 4, 0, 1]))
    assert weights.shape == (7, 5, 6)
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(7))
    assert float(weights.detach().std()) > 0


def test_untrained_soft_attention_leaves_the_network_unchanged(setup) -> None:
    network, detectors, train, _test = setup
    attention = SoftSpatialAttention(network.layers[-1].channels, 5)
    cue = train.labels[:10]
    with torch.no_grad():
        plain = cued_logits(network, detectors, train.images[:10], cue)
        attended = soft_spatial_logits(
            network, detectors, attention, network.layers[-1], train.images[:10], cue
        )
    torch.testing.assert_close(attended, plain)


def test_untrained_dasnet_policy_leaves_the_network_unchanged(setup) -> None:
    network, detectors, train, _test = setup
    policy = FeedbackPolicy(detectors.n_features, [la.channels for la in network.layers], 5)
    cue = train.labels[:10]
    with torch.no_grad():
        plain = cued_logits(network, detectors, train.images[:10], cue)
        logits, gains = dasnet_pass(
            network, detectors, policy, network.layers, train.images[:10], cue
        )
    torch.testing.assert_close(logits, plain)
    assert [g.shape for g in gains] == [(10, 2), (10, 3)]


# --- dasNet trained by SNES, as Stollenga et al. ----------------------------------------------
def test_rank_utilities_favour_the_fittest_and_sum_to_zero() -> None:
    u = rank_utilities(torch.tensor([0.1, 3.0, -1.0, 2.0]))
    assert float(u.sum()) == pytest.approx(0.0, abs=1e-12)
    assert int(torch.argmax(u)) == 1 and float(u[1]) > float(u[3]) > float(u[0])
    tied = rank_utilities(torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert float(tied[0]) == float(tied[1]) > float(tied[2]) == float(tied[3])


def test_snes_climbs_a_toy_fitness() -> None:
    # the sign of the update: the mean must move towards the optimum, never away
    target = torch.linspace(-1, 1, 6, dtype=torch.float64)
    distribution = SearchDistribution(torch.zeros(6), sigma=0.3)

    def distance() -> float:
        return float((distribution.mean - target).norm())

    start = distance()
    for generation in range(60):
        snes_step(
            distribution,
            lambda theta: -float(((theta - target) ** 2).sum()),
            10,
            torch.Generator().manual_seed(generation),
        )
    assert distance() < 0.2 * start
    reversed_distribution = SearchDistribution(torch.zeros(6), sigma=0.3)
    for generation in range(20):  # minimising instead must move away
        snes_step(
            reversed_distribution,
            lambda theta: float(((theta - target) ** 2).sum()),
            10,
            torch.Generator().manual_seed(generation),
        )
    assert float((reversed_distribution.mean - target).norm()) > start
    with pytest.raises(ConfigError, match="even number"):
        snes_step(distribution, lambda theta: 0.0, 3, torch.Generator())
    assert default_population(5008) == 30 and default_population(6) == 10


def test_dasnet_snes_trains_the_policy_and_resumes_to_the_same_result(setup, tmp_path) -> None:
    network, detectors, train, _test = setup
    pool = cued_set(list(training_pool(train, CATEGORIES, "merged", 6).values()), CATEGORIES)

    def run(path, stop_after=None):
        torch.manual_seed(0)
        policy = FeedbackPolicy(detectors.n_features, [la.channels for la in network.layers], 5, 8)
        log = train_dasnet_snes(
            network,
            detectors,
            policy,
            network.layers,
            pool,
            Budget(4, 16, 1.0),
            options=RunOptions(path, checkpoint_every=1, progress=False, stop_after=stop_after),
            population=4,
        )
        return policy, log

    whole, log = run(tmp_path / "a.pt")
    assert log.steps == 4 and len(log.history["loss"]) == 4
    assert float(whole.out.weight.detach().abs().sum()) > 0  # it moved off the all-ones start
    run(tmp_path / "b.pt", stop_after=2)
    resumed, _ = run(tmp_path / "b.pt")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# --- optimal gains ----------------------------------------------------------------------------
@pytest.mark.parametrize("layer", [0, 1])
def test_optimal_gains_never_worse_than_no_attention(setup, layer) -> None:
    network, detectors, train, _test = setup
    pool = cued_set(list(training_pool(train, CATEGORIES, "merged", 8).values()), CATEGORIES)
    # a large learning rate makes some steps worse: the best-so-far must still hold
    result = optimise_gains(
        network,
        detectors,
        network.layers[layer],
        pool,
        Budget(6, 16, 0.8),
        options=RunOptions(progress=False),
    )
    assert result.gains.shape == (5, network.layers[layer].channels)
    assert bool((result.gains >= 0).all()) and bool((result.gains <= 3).all())
    with torch.no_grad():
        base = cued_logits(network, detectors, pool.images, pool.category)
        scale = result.gains[pool.category][:, :, None, None]
        from bioattn.attention.gains import Modulation

        tuned = cued_logits(
            network,
            detectors,
            pool.images,
            pool.category,
            {network.layers[layer]: Modulation(scale=scale)},
        )
    before = per_category_performance(base, pool.is_target, pool.category, 5)
    after = per_category_performance(tuned, pool.is_target, pool.category, 5)
    assert bool((after >= before - 1e-9).all())
    torch.testing.assert_close(result.baseline_train, before.float())
    if layer == 0:  # the first layer has room to improve here: the optimisation must use it
        assert bool((after > before).any())


def test_holdout_split_is_disjoint_stratified_and_seeded() -> None:
    images = five_categories(n_per_category=10)
    fit, held = holdout_split(images, 0.3, seed=4)
    assert len(fit) + len(held) == len(images)
    assert torch.bincount(held.labels, minlength=5).tolist() == [3] * 5
    # no image is in both parts (the synthetic images are all distinct)
    both = torch.cdist(fit.images.flatten(1), held.images.flatten(1))
    assert float(both.min()) > 0
    again, _ = holdout_split(images, 0.3, seed=4)
    torch.testing.assert_close(again.images, fit.images, rtol=0, atol=0)
    other, _ = holdout_split(images, 0.3, seed=5)
    assert not torch.equal(other.images, fit.images)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        holdout_split(images, 1.0)


def _fit_and_validation(train: ImageSet) -> tuple:
    fit_images, held_images = holdout_split(train, 0.4, seed=0)
    fit = cued_set(list(training_pool(fit_images, CATEGORIES, "merged", 6).values()), CATEGORIES)
    validation = cued_set(
        list(training_pool(held_images, CATEGORIES, "merged", 4, seed=2).values()), CATEGORIES
    )
    return fit, validation


def test_optimal_gains_are_kept_by_validation_performance(setup) -> None:
    network, detectors, train, _test = setup
    fit, validation = _fit_and_validation(train)
    layer = network.layers[0]
    result = optimise_gains(
        network,
        detectors,
        layer,
        fit,
        Budget(8, 64, 0.8),
        options=RunOptions(progress=False),
        validation=validation,
    )
    from bioattn.attention.gains import Modulation

    def performance(data, gains) -> torch.Tensor:
        with torch.no_grad():
            scale = gains[data.category][:, :, None, None]
            logits = cued_logits(
                network, detectors, data.images, data.category, {layer: Modulation(scale=scale)}
            )
        return per_category_performance(logits, data.is_target, data.category, 5).float()

    ones = torch.ones_like(result.gains)
    # the scores reported are those of the gains kept, on each set
    torch.testing.assert_close(result.validation_performance, performance(validation, result.gains))
    torch.testing.assert_close(result.train_performance, performance(fit, result.gains))
    torch.testing.assert_close(result.baseline_validation, performance(validation, ones))
    # never worse than no attention on the validation set, and chosen by it
    assert bool((result.validation_performance >= result.baseline_validation).all())
    assert torch.equal(result.selection_performance, result.validation_performance)
    history = result.log.history["validation"]
    assert len(history) == 8 and max(history) >= history[0]
    assert bool((result.best_step >= 0).all()) and bool((result.best_step < 8).all())


def test_optimal_gains_stop_early_and_resume_to_the_same_result(setup, tmp_path) -> None:
    network, detectors, train, _test = setup
    fit, validation = _fit_and_validation(train)

    def run(path, stop_after=None):
        return optimise_gains(
            network,
            detectors,
            network.layers[1],
            fit,
            Budget(40, 64, 0.5),
            options=RunOptions(path, checkpoint_every=1, progress=False, stop_after=stop_after),
            validation=validation,
            patience=2,
        )

    whole = run(tmp_path / "whole.pt")
    assert whole.log.stopped_early and whole.log.finished
    assert whole.log.steps < 40
    # the run stopped `patience` steps after the last improvement of any category
    assert whole.log.steps == int(whole.best_step.max()) + 1 + 2
    run(tmp_path / "parts.pt", stop_after=2)
    resumed = run(tmp_path / "parts.pt")
    assert resumed.log.steps == whole.log.steps and resumed.log.stopped_early
    torch.testing.assert_close(resumed.gains, whole.gains, rtol=0, atol=0)
    torch.testing.assert_close(resumed.best_step, whole.best_step)
    again = run(tmp_path / "whole.pt")  # a finished, stopped run is read back, not extended
    assert again.log.steps == whole.log.steps
    torch.testing.assert_close(again.gains, whole.gains, rtol=0, atol=0)
    with pytest.raises(ConfigError, match="patience"):
        optimise_gains(
            network, detectors, network.layers[1], fit, Budget(1), validation=validation, patience=0
        )


def test_optimal_gains_reject_bad_bounds(setup) -> None:
    network, detectors, train, _test = setup
    pool = cued_set(list(training_pool(train, CATEGORIES, "merged", 2).values()), CATEGORIES)
    with pytest.raises(ConfigError, match="bounds"):
        optimise_gains(network, detectors, network.layers[0], pool, Budget(1), bounds=(1.5, 3.0))


# --- training: budgets and resuming -----------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs", [{"steps": 0}, {"steps": 3, "batch_size": 0}, {"steps": 3, "learning_rate": 0.0}]
)
def test_bad_budget_is_a_config_error(kwargs) -> None:
    with pytest.raises(ConfigError, match="budget"):
        Budget(**kwargs)


def test_resumed_ram_training_equals_uninterrupted(setup, tmp_path) -> None:
    _network, _detectors, train, _test = setup
    data = cued_set(list(training_pool(train, CATEGORIES, "array", 4).values()), CATEGORIES)
    budget = Budget(5, 8, 1e-2)

    def fresh() -> RecurrentAttentionModel:
        torch.manual_seed(1)
        return RecurrentAttentionModel(1, 5, 5, TINY_RAM)

    whole = fresh()
    log = train_ram(whole, data, budget, options=RunOptions(tmp_path / "a.pt", progress=False))
    part = fresh()
    first = train_ram(
        part, data, budget, options=RunOptions(tmp_path / "b.pt", 2, False, stop_after=3)
    )
    assert first.steps == 3 and not first.finished
    resumed = fresh()  # a new process would start from a fresh model too
    second = train_ram(resumed, data, budget, options=RunOptions(tmp_path / "b.pt", progress=False))
    assert second.resumed_from == 3 and second.finished and second.steps == 5
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert log.history == second.history
    # a checkpoint made for other settings is refused
    with pytest.raises(ConfigError, match="other settings"):
        train_ram(
            fresh(), data, Budget(5, 4), options=RunOptions(tmp_path / "b.pt", progress=False)
        )


def test_fresh_tasks_are_new_every_step_and_seeded(setup) -> None:
    _network, _detectors, train, _test = setup
    stream = FreshTasks(train, CATEGORIES, "array", CATEGORIES, per_class=3, seed=1)
    first, second = stream.batch(0), stream.batch(1)
    assert len(first) == 6 and first.image_type == "array"
    assert bool((first.category == 0).all()) and bool((second.category == 1).all())
    assert first.is_target.tolist() == [True] * 3 + [False] * 3
    torch.testing.assert_close(stream.batch(0).images, first.images, rtol=0, atol=0)
    later = stream.batch(len(CATEGORIES))  # the same category again, other stimuli
    assert bool((later.category == 0).all()) and not torch.equal(later.images, first.images)
    with pytest.raises(DataError, match="training images"):
        FreshTasks(_test, CATEGORIES, "array", CATEGORIES)


def test_ram_on_fresh_tasks_resumes_to_the_same_model(setup, tmp_path) -> None:
    _network, _detectors, train, _test = setup
    stream = FreshTasks(train, CATEGORIES, "array", CATEGORIES, per_class=2)

    def fresh() -> RecurrentAttentionModel:
        torch.manual_seed(1)
        return RecurrentAttentionModel(1, 5, 5, TINY_RAM)

    whole = fresh()
    train_ram(
        whole, stream, Budget(4, 8, 1e-2), options=RunOptions(tmp_path / "a.pt", progress=False)
    )
    part = fresh()
    options = RunOptions(tmp_path / "b.pt", 1, False, stop_after=2)
    train_ram(part, stream, Budget(4, 8, 1e-2), options=options)
    resumed = fresh()
    train_ram(
        resumed, stream, Budget(4, 8, 1e-2), options=RunOptions(tmp_path / "b.pt", progress=False)
    )
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resumed_soft_attention_training_equals_uninterrupted(setup, tmp_path) -> None:
    network, detectors, train, _test = setup
    data = cued_set(list(training_pool(train, CATEGORIES, "merged", 4).values()), CATEGORIES)
    layer = network.layers[-1]

    def run(path, stop_after=None) -> SoftSpatialAttention:
        torch.manual_seed(2)
        attention = SoftSpatialAttention(layer.channels, 5, 4)
        train_soft_spatial(
            network,
            detectors,
            attention,
            layer,
            data,
            Budget(4, 8, 0.05),
            options=RunOptions(path, progress=False, stop_after=stop_after),
        )
        return attention

    whole = run(tmp_path / "a.pt")
    run(tmp_path / "b.pt", stop_after=1)
    resumed = run(tmp_path / "b.pt")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert float(whole.score.detach().abs().sum()) > 0  # it did train


# --- the comparison ---------------------------------------------------------------------------
def tiny_config(**changes) -> CompareConfig:
    settings = {
        "n_pos": 6,
        "n_neg": 6,
        "pool_per_class": 6,
        "select_per_class": 4,
        "betas": (0.0, 1.0),
        "ram": TINY_RAM,
        "ram_budget": Budget(2, 8),
        "soft_budget": Budget(2, 8),
        "dasnet_budget": Budget(2, 8),
        "dasnet_snes_budget": Budget(2, 8, 1.0),
        "dasnet_population": 4,
        "optimal_budget": Budget(2, 32, 0.1),
        "clutter_budget": Budget(2, 8),
        "clutter_train": 16,
        "clutter_test": 8,
        "clutter_size": 12,
        "clutter_pieces": 2,
        "clutter_piece_size": 3,
    }
    settings.update(changes)
    return CompareConfig(**settings)


def compare(setup, tmp_path, config: CompareConfig, image_types=("array", "merged")):
    network, detectors, train, test = setup
    values = compute_values(
        network, detectors, train, image_types, gradient_set_size=4, progress=False
    )
    return compare_mechanisms(
        network, detectors, values, train, test, config, tmp_path, progress=False
    )


def test_comparison_table_on_a_tiny_setup(setup, tmp_path) -> None:
    # arrays only: merged images take the same code path with other images
    config = tiny_config(categories=("a", "c"), image_types=("array",))
    result = compare(setup, tmp_path, config, ("array",))
    summary = pd.read_csv(tmp_path / "comparison.csv")
    assert set(summary["mechanism"]) == set(MECHANISMS)
    assert set(summary["image_type"]) == {"array"}
    assert len(summary) == len(MECHANISMS)
    for column in ("tp", "tn", "dprime", "criterion", "train_seconds"):
        assert summary[column].notna().all()
    by_category = result.by_category
    assert len(by_category) == 2 * len(MECHANISMS)
    assert (by_category["n_pos"] == 6).all() and (by_category["n_neg"] == 6).all()
    # FSGM rows that chose no attention on the training pool are the no-attention row
    keys = ["image_type", "category"]
    none = by_category[by_category["mechanism"] == "none"].set_index(keys)
    for _, row in by_category[by_category["mechanism"].str.startswith("fsgm")].iterrows():
        if row["layer"] in ("", None) or pd.isna(row["layer"]):
            assert row["tp"] == none.loc[(row["image_type"], row["category"]), "tp"]
    assert set(result.correlations["gains"]) == {"optimal", "dasnet", "dasnet-snes"}
    # the optimal gains report their fitting-pool and validation performance
    optimal = by_category[by_category["mechanism"] == "fsgm-optimal"]
    assert optimal["train_performance"].between(0, 1).all()
    assert optimal["validation_performance"].between(0, 1).all()
    # overt vs covert vs feature attention on the arrays, one row each, with d′ and criterion
    overt_covert = pd.read_csv(tmp_path / "overt_covert.csv")
    assert list(overt_covert["mechanism"]) == [m for m, _ in OVERT_COVERT]
    assert overt_covert[["dprime", "criterion", "performance"]].notna().all().all()
    spatial = by_category[by_category["mechanism"] == "fsgm-spatial"]
    assert len(spatial) == 2 and (spatial["beta"] >= 0).all()
    for name in (
        "comparison",
        "ram_glimpses_array",
        "soft_attention_array",
        "ram_glimpses_clutter",
    ):
        assert (tmp_path / "figures" / f"{name}.png").exists()
        assert (tmp_path / "figures" / f"{name}.svg").exists()
    assert (tmp_path / "config.json").exists()
    assert 0.0 <= result.clutter["test_accuracy"] <= 1.0
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 2 + 4 + 1


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"categories": ("zebra",)}, CategoryError, "valid categories"),
        ({"soft_layer": "conv9_9"}, LayerError, "valid layers"),
        ({"fsgm_layers": ("conv0",)}, LayerError, "valid layers"),
    ],
)
def test_comparison_rejects_bad_names(setup, tmp_path, changes, error, message) -> None:
    with pytest.raises(error, match=message):
        compare(setup, tmp_path, tiny_config(image_types=("merged",), **changes), ("merged",))


def test_comparison_config_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="cannot be compared"):
        tiny_config(image_types=("noise",))
    with pytest.raises(ConfigError, match="bounds"):
        tiny_config(optimal_bounds=(0.0, 0.5))
    with pytest.raises(ConfigError, match="pool_per_class"):
        tiny_config(pool_per_class=0)
    with pytest.raises(ConfigError, match="even number"):
        tiny_config(dasnet_population=3)


def test_checkpoints_of_other_data_or_more_steps_are_refused(tmp_path) -> None:
    from bioattn.errors import ConfigError
    from bioattn.mechanisms.training import train_loop

    def run(data: torch.Tensor, steps: int) -> None:
        layer = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.1)

        def step(_: int) -> dict[str, float]:
            optimizer.zero_grad()
            loss = layer(data).pow(2).mean()
            loss.backward()
            optimizer.step()
            return {"loss": loss.item()}

        options = RunOptions(checkpoint=tmp_path / "run.pt", progress=False)
        train_loop({"layer": layer}, optimizer, step, steps, {"n": 4}, options=options, data=[data])

    first = torch.ones(4, 2)
    run(first, 3)
    with pytest.raises(ConfigError, match="written for other settings"):
        run(torch.zeros(4, 2), 3)  # same settings and shapes, other training data
    with pytest.raises(ConfigError, match="has trained 3 steps, more than the 2 asked for"):
        run(first, 2)
    run(first, 5)  # a longer budget resumes
