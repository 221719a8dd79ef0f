"""Greedy RBM pretraining: the CD update by hand, free energies by brute force,
learning on toy data, PCD's chain, the unrolled stack and the on-disk cache.

Run: ``OMP_NUM_THREADS=1 python -m pytest tests/test_rbm.py -q`` (a few seconds).
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from vgbench.models import FAMILIES, ModelIO
from vgbench.models.recipe import Recipe
from vgbench.pretraining import (RBM, PretrainedLayer, PretrainedStack, PretrainSettings, load_into_mlp,
                                 load_or_pretrain, pretrain_stack, scale_to_unit_interval, stack_key,
                                 stack_key_fields)
from vgbench.pretraining.cache import STACK_FILE, STATS_FILE

PROTOTYPES = torch.tensor([
    [1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 0, 1, 0],
    [0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 1, 1, 0, 1, 0, 1],
    [1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0],
    [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0],
], dtype=torch.float32)


def noisy_prototypes(samples: int, seed: int, flip_probability: float = 0.05) -> torch.Tensor:
    """Binary toy data: one of four 16-bit prototypes per sample, each bit flipped with 5%."""
    generator = torch.Generator().manual_seed(seed)
    which = torch.randint(0, len(PROTOTYPES), (samples,), generator=generator)
    flips = (torch.rand(samples, PROTOTYPES.shape[1], generator=generator) < flip_probability).float()
    return (PROTOTYPES[which] + flips) % 2


def standardized_features(samples: int, features: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    latent = torch.randn(samples, 3, generator=generator)
    x = torch.tanh(latent @ torch.randn(3, features, generator=generator))
    x = x + 0.3 * torch.randn(samples, features, generator=generator)
    return (x - x.mean(0)) / x.std(0)


def sigmoid(value: float) -> float:
    return 1.0 / (1.0 + math.exp(-value))


# CD-1 by hand -------------------------------------------------------------------------

WEIGHT = [[0.2, -0.4, 0.1], [-0.3, 0.5, 0.6]]  # 2 hidden x 3 visible
VISIBLE_BIAS = [0.1, -0.2, 0.05]
HIDDEN_BIAS = [-0.1, 0.2]
DATA = [[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 0.0]]


def hand_cd1_step(weight, visible_bias, hidden_bias, data, sampler, learning_rate, weight_decay):
    """The CD-1 gradient step of Hinton's guide, written out element by element.

    p0 = p(h | v0); h0 ~ Bernoulli(p0) (drawn by ``sampler``); v1 = p(v | h0)
    (probabilities, not samples); p1 = p(h | v1). Returns the steps
    lr * (<v p>_0 - <v p>_1 - decay * W), lr * (<v>_0 - <v>_1), lr * (<p>_0 - <p>_1).
    """
    hidden_range, visible_range, rows = range(len(weight)), range(len(weight[0])), range(len(data))
    p0 = [[sigmoid(hidden_bias[j] + sum(weight[j][i] * v[i] for i in visible_range)) for j in hidden_range]
          for v in data]
    h0 = sampler(p0)
    v1 = [[sigmoid(visible_bias[i] + sum(h[j] * weight[j][i] for j in hidden_range)) for i in visible_range]
          for h in h0]
    p1 = [[sigmoid(hidden_bias[j] + sum(weight[j][i] * v[i] for i in visible_range)) for j in hidden_range]
          for v in v1]
    count = len(data)
    weight_step = [[learning_rate * (sum(p0[n][j] * data[n][i] - p1[n][j] * v1[n][i] for n in rows) / count
                                     - weight_decay * weight[j][i]) for i in visible_range] for j in hidden_range]
    visible_step = [learning_rate * sum(data[n][i] - v1[n][i] for n in rows) / count for i in visible_range]
    hidden_step = [learning_rate * sum(p0[n][j] - p1[n][j] for n in rows) / count for j in hidden_range]
    return weight_step, visible_step, hidden_step


def test_cd1_update_with_momentum_and_weight_decay_matches_hand_computation():
    learning_rate, momentum, weight_decay, seed = 0.5, 0.7, 0.01, 3
    as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
    rbm = RBM.from_parameters(as_tensor(WEIGHT), as_tensor(VISIBLE_BIAS), as_tensor(HIDDEN_BIAS),
                              gaussian_visible=False, generator=torch.Generator().manual_seed(seed))
    # The RBM's contract: the positive-phase hidden sample is its generator's next draw,
    # torch.bernoulli(p(h | v0)). The hand computation draws it from a twin generator.
    twin = torch.Generator().manual_seed(seed)
    sampler = lambda p: torch.bernoulli(as_tensor(p), generator=twin).tolist()  # noqa: E731

    weight, visible_bias, hidden_bias = WEIGHT, VISIBLE_BIAS, HIDDEN_BIAS
    velocities = None
    for _ in range(2):  # the second update also checks the momentum term
        rbm.contrastive_divergence_update(as_tensor(DATA), learning_rate=learning_rate, k=1,
                                          momentum=momentum, weight_decay=weight_decay)
        steps = hand_cd1_step(weight, visible_bias, hidden_bias, DATA, sampler, learning_rate, weight_decay)
        if velocities is None:
            velocities = steps
        else:
            velocities = ([[momentum * old + new for old, new in zip(old_row, new_row)]
                           for old_row, new_row in zip(velocities[0], steps[0])],
                          [momentum * old + new for old, new in zip(velocities[1], steps[1])],
                          [momentum * old + new for old, new in zip(velocities[2], steps[2])])
        weight = [[w + dw for w, dw in zip(row, step_row)] for row, step_row in zip(weight, velocities[0])]
        visible_bias = [b + db for b, db in zip(visible_bias, velocities[1])]
        hidden_bias = [c + dc for c, dc in zip(hidden_bias, velocities[2])]
        torch.testing.assert_close(rbm.weight, as_tensor(weight), rtol=0, atol=1e-12)
        torch.testing.assert_close(rbm.visible_bias, as_tensor(visible_bias), rtol=0, atol=1e-12)
        torch.testing.assert_close(rbm.hidden_bias, as_tensor(hidden_bias), rtol=0, atol=1e-12)
    assert rbm.weight[0, 0].item() != pytest.approx(WEIGHT[0][0], abs=1e-3)  # the update did move W


# Free energy by brute force -------------------------------------------------------------

def brute_force_free_energy(rbm: RBM, visible: torch.Tensor) -> torch.Tensor:
    """-log sum_h exp(-E(v, h)) over all 2^H hidden configurations."""
    hidden_configurations = torch.tensor(list(itertools.product([0.0, 1.0], repeat=rbm.num_hidden)),
                                         dtype=visible.dtype)
    free_energies = []
    for v in visible:
        if rbm.gaussian_visible:
            visible_energy = 0.5 * ((v - rbm.visible_bias) ** 2).sum()
        else:
            visible_energy = -(rbm.visible_bias * v).sum()
        energies = [visible_energy - (rbm.hidden_bias * h).sum() - h @ rbm.weight @ v
                    for h in hidden_configurations]
        free_energies.append(-torch.logsumexp(-torch.stack(energies), dim=0))
    return torch.stack(free_energies)


@pytest.mark.parametrize("gaussian_visible", [False, True])
def test_free_energy_equals_brute_force_sum_over_hidden_states(gaussian_visible):
    generator = torch.Generator().manual_seed(11)
    rbm = RBM.from_parameters(torch.randn(3, 4, generator=generator, dtype=torch.float64),
                              torch.randn(4, generator=generator, dtype=torch.float64),
                              torch.randn(3, generator=generator, dtype=torch.float64),
                              gaussian_visible=gaussian_visible, generator=generator)
    if gaussian_visible:
        visible = 2 * torch.randn(5, 4, generator=generator, dtype=torch.float64)
    else:
        visible = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4)), dtype=torch.float64)
    torch.testing.assert_close(rbm.free_energy(visible), brute_force_free_energy(rbm, visible),
                               rtol=0, atol=1e-10)


def test_reconstruction_error_is_mse_against_mean_field_reconstruction():
    rbm = RBM.from_parameters(torch.tensor(WEIGHT), torch.tensor(VISIBLE_BIAS), torch.tensor(HIDDEN_BIAS),
                              gaussian_visible=False, generator=torch.Generator())
    v = torch.tensor(DATA)
    p = torch.sigmoid(v @ torch.tensor(WEIGHT).T + torch.tensor(HIDDEN_BIAS))
    reconstruction = torch.sigmoid(p @ torch.tensor(WEIGHT) + torch.tensor(VISIBLE_BIAS))
    assert rbm.reconstruction_error(v).item() == pytest.approx(((v - reconstruction) ** 2).mean().item(), abs=1e-7)


# Learning on toy data -------------------------------------------------------------------

def exact_log_likelihood(rbm: RBM, data: torch.Tensor) -> float:
    """Mean log p(v) with log Z summed over all 2^16 visible vectors (feasible for 16 units)."""
    all_visible = torch.tensor(list(itertools.product([0.0, 1.0], repeat=rbm.num_visible)))
    log_partition = torch.logsumexp(-rbm.free_energy(all_visible).double(), dim=0)
    return (-rbm.free_energy(data).double() - log_partition).mean().item()


@pytest.mark.parametrize("settings", [
    PretrainSettings(epochs=10, batch_size=20),
    # PCD wants a smaller step and less momentum than CD (Tieleman 2008).
    PretrainSettings(epochs=10, batch_size=20, persistent=True, learning_rate=0.05, momentum=0.5),
], ids=["cd1", "pcd1"])
def test_reconstruction_error_falls_and_likelihood_rises_on_noisy_prototypes(settings):
    train, val = noisy_prototypes(400, seed=0), noisy_prototypes(100, seed=1)
    stack = pretrain_stack(train, val, [8], settings, seed=0, gaussian_first=False)
    epochs = stack.stats["layers"][0]["epochs"]
    assert [e["epoch"] for e in epochs] == list(range(settings.epochs + 1))
    first, last = epochs[0], epochs[-1]
    ratio = 0.5 if not settings.persistent else 0.75
    assert last["reconstruction_error_train"] < ratio * first["reconstruction_error_train"]
    assert last["reconstruction_error_val"] < ratio * first["reconstruction_error_val"]
    assert all(math.isfinite(e["free_energy_gap"]) for e in epochs)

    trained = stack.layers[0].to_rbm()
    untrained = RBM(16, 8, gaussian_visible=False, generator=torch.Generator().manual_seed(0))
    untrained.init_visible_bias(train)
    # The untrained RBM already fits the marginals (visible biases from the data); a
    # trained one must capture the prototypes' correlations too: 3 to 6 nats better here.
    assert exact_log_likelihood(trained, val) > exact_log_likelihood(untrained, val) + 2.0


# Persistent CD ------------------------------------------------------------------------

def test_persistent_chain_continues_from_the_fantasy_particles_across_updates():
    generator = torch.Generator().manual_seed(5)
    twin = torch.Generator().manual_seed(5)
    weight = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    visible_bias, hidden_bias = torch.tensor([0.1, -0.3, 0.2, 0.0]), torch.tensor([0.2, -0.1, 0.05])
    rbm = RBM.from_parameters(weight, visible_bias, hidden_bias, gaussian_visible=False, generator=generator)
    particles = torch.tensor([[1.0, 0, 0, 1], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0], [1, 0, 1, 0],
                              [0, 1, 0, 1], [1, 1, 0, 0]])
    rbm.fantasy_visible = particles.clone()  # 7 particles, more than the batch of 5 rows
    batches = [torch.tensor([[1.0, 1, 0, 0]] * 5), torch.tensor([[0.0, 0, 1, 1]] * 5)]

    for batch in batches:
        # PCD-1 by hand: one Gibbs sweep of the particles, both layers sampled.
        hidden = torch.bernoulli(torch.sigmoid(particles @ weight.T + hidden_bias), generator=twin)
        particles = torch.bernoulli(torch.sigmoid(hidden @ weight + visible_bias), generator=twin)
        positive = torch.sigmoid(batch @ weight.T + hidden_bias)
        negative = torch.sigmoid(particles @ weight.T + hidden_bias)
        weight = weight + 0.1 * (positive.T @ batch / 5 - negative.T @ particles / 7)
        visible_bias = visible_bias + 0.1 * (batch.mean(0) - particles.mean(0))
        hidden_bias = hidden_bias + 0.1 * (positive.mean(0) - negative.mean(0))

        rbm.contrastive_divergence_update(batch, learning_rate=0.1, k=1, persistent=True)
        assert rbm.fantasy_visible.shape == (7, 4)
        assert torch.equal(rbm.fantasy_visible, particles)
        torch.testing.assert_close(rbm.weight, weight, rtol=0, atol=1e-6)
        torch.testing.assert_close(rbm.visible_bias, visible_bias, rtol=0, atol=1e-6)
        torch.testing.assert_close(rbm.hidden_bias, hidden_bias, rtol=0, atol=1e-6)

    chain_before = rbm.fantasy_visible.clone()
    rbm.contrastive_divergence_update(batches[0], learning_rate=0.1, k=1, persistent=False)
    assert torch.equal(rbm.fantasy_visible, chain_before)  # plain CD leaves the chain alone


def test_persistent_chain_starts_from_the_first_batch_and_runs_k_steps():
    rbm = RBM(16, 8, gaussian_visible=False, generator=torch.Generator().manual_seed(0))
    assert rbm.fantasy_visible is None
    batch = noisy_prototypes(10, seed=2)
    rbm.contrastive_divergence_update(batch, learning_rate=0.05, k=3, persistent=True)
    assert rbm.fantasy_visible.shape == batch.shape
    assert set(rbm.fantasy_visible.unique().tolist()) <= {0.0, 1.0}  # sampled states, not means


def test_divergence_raises_instead_of_failing_inside_bernoulli():
    rbm = RBM(5, 3, gaussian_visible=True, generator=torch.Generator().manual_seed(0))
    data = 3 * torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    with pytest.raises(FloatingPointError, match="non-finite"):
        for _ in range(100):
            rbm.contrastive_divergence_update(data, learning_rate=1e3, momentum=0.9, persistent=True)
    settings = PretrainSettings(learning_rate=1e3, persistent=True, batch_size=2, epochs=10)
    with pytest.raises(FloatingPointError, match=r"pretraining layer 0, epoch \d+: .*non-finite"):
        pretrain_stack(data, data, [3], settings, seed=0, gaussian_first=True)


# The stack and its unrolling ----------------------------------------------------------------

FAST = PretrainSettings(epochs=2, batch_size=25)


def mlp(depth: int, seeds=(0,)):
    """The sigmoid baseline recipe (no norm, no skip), 10 inputs, width 8, a stack of ``len(seeds)`` models."""
    entry = FAMILIES.get("mlp")
    return entry.build(ModelIO((10,), 3), depth, Recipe(), entry.hparams(width=8), seeds)


def test_unrolled_stack_reproduces_the_rbms_up_pass_exactly():
    x = standardized_features(250, 10, seed=0)
    stack = pretrain_stack(x[:200], x[200:], [8, 8, 8], FAST, seed=0, gaussian_first=True)
    model = mlp(3, seeds=(0, 1))
    untouched = mlp(3, seeds=(0, 1))
    load_into_mlp(stack, model, k=1)  # into model 1 of two

    captured = []
    hooks = [layer.activation.register_forward_hook(lambda _m, _in, out: captured.append(out))
             for layer in model.hidden]
    with torch.no_grad():
        model(x[200:].expand(2, -1, -1))
    for hook in hooks:
        hook.remove()

    expected, h = [], x[200:]
    for layer in stack.layers:
        h = layer.to_rbm().hidden_probabilities(h)
        expected.append(h)
    assert len(captured) == 3
    for index, (got, want) in enumerate(zip(captured, expected)):
        assert torch.equal(got[1], want), f"hidden layer {index}"
    assert torch.equal(model.hidden[2].linear.weight[1], stack.layers[2].weight)
    assert torch.equal(model.hidden[2].linear.bias[1], stack.layers[2].hidden_bias)
    for layer, before in zip(model.hidden, untouched.hidden):  # model 0 keeps its own weights
        assert torch.equal(layer.linear.weight[0], before.linear.weight[0])
        assert torch.equal(layer.linear.bias[0], before.linear.bias[0])
    assert stack.layers[0].gaussian_visible and not stack.layers[1].gaussian_visible


def test_load_into_mlp_names_the_mismatching_layer_and_copies_nothing():
    generator = torch.Generator().manual_seed(0)
    shapes = [(8, 10), (6, 8), (8, 6)]
    stack = PretrainedStack([PretrainedLayer(torch.randn(h, v, generator=generator), torch.zeros(h),
                                             torch.zeros(v), False) for h, v in shapes])
    model = mlp(3, seeds=(0, 1))
    before = model.hidden[0].linear.weight.clone()
    with pytest.raises(ValueError, match=r"hidden\.1\.linear"):
        load_into_mlp(stack, model, k=1)
    assert torch.equal(model.hidden[0].linear.weight, before)
    with pytest.raises(ValueError, match="3 layers, the model 2"):
        load_into_mlp(stack, mlp(2))


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    x = standardized_features(150, 6, seed=1)
    settings = PretrainSettings(epochs=2, batch_size=25, persistent=True, learning_rate=0.01, k=2)
    first = pretrain_stack(x[:100], x[100:], [5, 4], settings, seed=7, gaussian_first=True)
    again = pretrain_stack(x[:100], x[100:], [5, 4], settings, seed=7, gaussian_first=True)
    other = pretrain_stack(x[:100], x[100:], [5, 4], settings, seed=8, gaussian_first=True)
    for a, b in zip(first.layers, again.layers):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.hidden_bias, b.hidden_bias)
    assert first.stats["layers"][1]["epochs"] == again.stats["layers"][1]["epochs"]
    assert not torch.equal(first.layers[0].weight, other.layers[0].weight)


def test_stats_are_json_and_record_every_layer_and_epoch():
    x = standardized_features(150, 6, seed=2)
    stack = pretrain_stack(x[:100], x[100:], [5, 4], FAST, seed=0, gaussian_first=True)
    stats = json.loads(json.dumps(stack.stats))
    assert [layer["num_hidden"] for layer in stats["layers"]] == [5, 4]
    assert [layer["visible_units"] for layer in stats["layers"]] == ["gaussian", "bernoulli"]
    assert len(stats["layers"][1]["epochs"]) == FAST.epochs + 1
    assert stats["settings"] == FAST.model_dump()


def test_each_layer_is_trained_and_monitored_on_the_mean_activations_below():
    x = standardized_features(200, 6, seed=2)
    train, val = x[:100], x[100:]  # equally many: the free-energy gap then uses all of train
    stack = pretrain_stack(train, val, [5, 4, 3], FAST, seed=0, gaussian_first=True)
    for layer, layer_stats in zip(stack.layers, stack.stats["layers"]):
        rbm, last_epoch = layer.to_rbm(), layer_stats["epochs"][-1]
        assert last_epoch["reconstruction_error_train"] == pytest.approx(
            rbm.reconstruction_error(train).item(), rel=1e-5)
        assert last_epoch["reconstruction_error_val"] == pytest.approx(
            rbm.reconstruction_error(val).item(), rel=1e-5)
        gap = rbm.free_energy(val).mean() - rbm.free_energy(train).mean()
        assert last_epoch["free_energy_gap"] == pytest.approx(gap.item(), rel=1e-4, abs=1e-5)
        train, val = rbm.hidden_probabilities(train), rbm.hidden_probabilities(val)  # p(h|v), not samples


def test_bernoulli_first_layer_rejects_inputs_outside_the_unit_interval():
    x = standardized_features(60, 4, seed=3)
    with pytest.raises(ValueError, match="scale_to_unit_interval"):
        pretrain_stack(x[:40], x[40:], [3], FAST, seed=0, gaussian_first=False)
    train, val = scale_to_unit_interval(x[:40], x[40:])
    assert pretrain_stack(train, val, [3], FAST, seed=0, gaussian_first=False).widths == [3]


def test_scale_to_unit_interval_uses_training_range_and_clamps_the_rest():
    train = torch.tensor([[0.0, 5.0, 2.0], [4.0, 7.0, 2.0]])
    val = torch.tensor([[2.0, 9.0, 3.0], [-4.0, 6.0, 2.0]])
    train_scaled, val_scaled = scale_to_unit_interval(train, val)
    assert torch.equal(train_scaled, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert torch.equal(val_scaled, torch.tensor([[0.5, 1.0, 1.0], [0.0, 0.5, 0.0]]))


def test_settings_forbid_unknown_keys_and_bad_values():
    with pytest.raises(ValidationError):
        PretrainSettings(epoch=3)
    for bad in ({"k": 0}, {"momentum": 1.0}, {"learning_rate": 0.0}, {"batch_size": 0}):
        with pytest.raises(ValidationError):
            PretrainSettings(**bad)


# The on-disk cache --------------------------------------------------------------------------

def tiny_key_fields(**changes) -> dict:
    arguments = {"data": {"name": "toy", "samples": 60}, "widths": [4, 4], "seed": 0,
                 "settings": PretrainSettings(epochs=1, batch_size=20), "gaussian_first": True}
    arguments.update(changes)
    return stack_key_fields(**arguments)


class CountingMaker:
    """A ``make`` that pretrains a tiny stack and counts its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self) -> PretrainedStack:
        self.calls += 1
        x = standardized_features(60, 5, seed=4)
        return pretrain_stack(x[:40], x[40:], [4, 4], PretrainSettings(epochs=1, batch_size=20),
                              seed=0, gaussian_first=True)


def test_second_request_reads_the_cache_without_pretraining(tmp_path):
    make, key_fields = CountingMaker(), tiny_key_fields()
    fresh, was_cached = load_or_pretrain(tmp_path, key_fields, make)
    assert (was_cached, make.calls) == (False, 1)
    cached, was_cached = load_or_pretrain(tmp_path, key_fields, make)
    assert (was_cached, make.calls) == (True, 1)
    for a, b in zip(fresh.layers, cached.layers):
        assert torch.equal(a.weight, b.weight) and torch.equal(a.hidden_bias, b.hidden_bias)
        assert torch.equal(a.visible_bias, b.visible_bias) and a.gaussian_visible == b.gaussian_visible
    assert cached.stats == json.loads(json.dumps(fresh.stats))
    entry = tmp_path / stack_key(key_fields)
    assert sorted(path.name for path in entry.iterdir()) == [STACK_FILE, STATS_FILE]
    assert json.loads((entry / STATS_FILE).read_text())["key_fields"] == key_fields


def test_every_input_of_the_key_changes_it():
    base = PretrainSettings(epochs=1, batch_size=20)
    variants = [tiny_key_fields(), tiny_key_fields(seed=1), tiny_key_fields(widths=[4, 5]),
                tiny_key_fields(gaussian_first=False), tiny_key_fields(data={"name": "toy", "samples": 61})]
    for field, value in {"epochs": 2, "learning_rate": 0.2, "k": 2, "persistent": True,
                         "momentum": 0.5, "weight_decay": 0.0, "batch_size": 21}.items():
        variants.append(tiny_key_fields(settings=base.model_copy(update={field: value})))
    keys = [stack_key(fields) for fields in variants]
    assert len(set(keys)) == len(keys)
    assert keys[0].startswith("rbm-toy-2x4-seed0-")
    assert stack_key(tiny_key_fields()) == keys[0]  # and it is stable


def test_a_stack_made_by_other_pretraining_code_or_another_torch_is_not_reused(tmp_path, monkeypatch, request):
    """The key had the data, widths, seed and settings but not the code: after an edit of the RBM code, the
    cells retrained (their own fingerprint covers it) on stacks the old code had made."""
    import shutil

    from vgbench.pretraining import cache

    request.addfinalizer(cache.maker_fingerprint.cache_clear)
    make, original = CountingMaker(), cache.maker_fingerprint()
    load_or_pretrain(tmp_path / "stacks", tiny_key_fields(), make)
    copy = tmp_path / "pretraining"
    shutil.copytree(Path(cache.__file__).parent, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache, "__file__", str(copy / "cache.py"))
    cache.maker_fingerprint.cache_clear()
    assert cache.maker_fingerprint() == original  # the same bytes elsewhere: the same maker
    assert load_or_pretrain(tmp_path / "stacks", tiny_key_fields(), make)[1] and make.calls == 1
    (copy / "rbm.py").write_text((copy / "rbm.py").read_text() + "\n# another CD step\n")
    cache.maker_fingerprint.cache_clear()
    edited = cache.maker_fingerprint()
    monkeypatch.setattr(torch, "__version__", "0.0.1")
    cache.maker_fingerprint.cache_clear()
    assert len({original, edited, cache.maker_fingerprint()}) == 3
    assert tiny_key_fields()["made_by"] == cache.maker_fingerprint()
    assert stack_key(tiny_key_fields()) != stack_key({**tiny_key_fields(), "made_by": original})
    _, was_cached = load_or_pretrain(tmp_path / "stacks", tiny_key_fields(), make)
    assert (was_cached, make.calls) == (False, 2)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "flipped_byte", "stats_missing", "stats_half"])
def test_a_damaged_entry_is_recomputed_not_trusted(tmp_path, damage):
    make, key_fields = CountingMaker(), tiny_key_fields()
    load_or_pretrain(tmp_path, key_fields, make)
    entry = tmp_path / stack_key(key_fields)
    stack_bytes = (entry / STACK_FILE).read_bytes()
    if damage == "garbage":
        (entry / STACK_FILE).write_bytes(b"not a torch file")
    elif damage == "truncated":
        (entry / STACK_FILE).write_bytes(stack_bytes[: len(stack_bytes) // 2])
    elif damage == "flipped_byte":  # still a readable zip: only the checksum can tell
        middle = len(stack_bytes) // 2
        (entry / STACK_FILE).write_bytes(stack_bytes[:middle] + bytes([stack_bytes[middle] ^ 1])
                                         + stack_bytes[middle + 1:])
    elif damage == "stats_missing":
        (entry / STATS_FILE).unlink()
    else:
        text = (entry / STATS_FILE).read_text()
        (entry / STATS_FILE).write_text(text[: len(text) // 2])

    _, was_cached = load_or_pretrain(tmp_path, key_fields, make)
    assert (was_cached, make.calls) == (False, 2)
    _, was_cached = load_or_pretrain(tmp_path, key_fields, make)
    assert (was_cached, make.calls) == (True, 2)  # the rewritten entry is sound again
