"""Training loop: determinism, perturbation sources, EMA (checkpoints: test_bad_input, test_cache)."""

from __future__ import annotations

import math

import pytest
import torch

import lib.attacks as A
import lib.data as D
import lib.models as M
from lib.errors import ConfigError
from lib.methods.single_step_reuse import StoredPerturbation
from lib.train import (
    AttackSource,
    EarlyStopping,
    GeneratorSource,
    TrainConfig,
    Validation,
    make_optimizer,
    make_schedule,
    train,
    validation_hook,
)


def _run(mnist, source=None, **cfg):
    model = M.build("mnist_cnn", mnist.shape, 10, width=8, hidden=32)
    loader = D.loader(D.subset(mnist.train, 512, 0), 64, True, with_index=True)
    return train(model, loader, TrainConfig(epochs=2, **cfg), source)


def test_same_run_twice_gives_identical_metrics_and_weights(mnist):
    a, b = _run(mnist), _run(mnist)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert all(torch.equal(p, q) for p, q in zip(a.model.parameters(), b.model.parameters()))


def test_adversarial_training_with_attack_source_and_ema(mnist):
    res = _run(mnist, AttackSource(A.fgsm, eps=0.1), clean_weight=0.5, ema_decay=0.9)
    assert len(res.history) == 2 and res.ema is not None and res.final is res.ema.module
    assert res.sec_per_epoch > 0


def test_stored_perturbation_steps_once_per_epoch_and_resets():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    src = StoredPerturbation(4, (1, 4, 4), eps=0.3, step_size=0.1, reset_every=2)
    x, y, idx = torch.full((4, 1, 4, 4), 0.5), torch.tensor([0, 1, 2, 0]), torch.arange(4)
    src.start_epoch(0)
    first = src(model, x, y, idx)
    assert torch.allclose((first - x).abs(), torch.full_like(x, 0.1))
    src.start_epoch(1)
    second = src(model, x, y, idx)
    assert (second - x).abs().max() <= 0.2 + 1e-6 and (second - x).abs().max() > 0.1
    for _ in range(5):
        src(model, x, y, idx)
    assert (src.delta.abs() <= 0.3 + 1e-6).all()
    src.start_epoch(2)
    assert src.delta.abs().sum() == 0


def test_generator_source_ascends_the_classifier_loss(mnist):
    torch.manual_seed(0)
    gen = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3, padding=1))
    opt = torch.optim.SGD(gen.parameters(), lr=0.5, maximize=True)
    make = lambda model, x, y: (x + 0.2 * torch.tanh(gen(x))).clamp(0, 1)  # noqa: E731
    model = M.build("mnist_cnn", mnist.shape, 10, width=8, hidden=32)
    x, y = D.tensors(D.subset(mnist.train, 64, 0))
    lossf = torch.nn.functional.cross_entropy
    before = lossf(model(make(model, x, y)), y).item()
    src = GeneratorSource(make, opt)
    x_adv = src(model, x, y, None)
    lossf(model(x_adv), y).backward()
    src.step()
    with torch.no_grad():
        assert lossf(model(make(model, x, y)), y).item() > before
    with pytest.raises(ConfigError):
        GeneratorSource(make, torch.optim.SGD(gen.parameters(), lr=0.1))


@pytest.mark.parametrize(
    "bad", [dict(epochs=-1), dict(lr=0), dict(optimizer="rmsprop"), dict(clean_weight=2.0), dict(lr_schedule="step")]
)
def test_bad_training_config_is_rejected_before_training(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad).validate()


def test_the_cpu_data_path_is_the_dataloaders_own_batches(mnist):
    """The GPU path (on-device index batching) never touches the CPU path: same batches, same order."""
    loader = D.loader(D.subset(mnist.train, 200, 0), 64, True, seed=3, with_index=True)
    expected = [
        tuple(t.clone() for t in b) for b in D.loader(D.subset(mnist.train, 200, 0), 64, True, seed=3, with_index=True)
    ]
    got = list(D.batches(loader, "cpu"))
    assert len(got) == len(expected) and all(torch.equal(a, b) for g, e in zip(got, expected) for a, b in zip(g, e))


def test_index_batching_covers_every_example_once_per_pass(mnist):
    split = D.subset(mnist.train, 200, 0)
    got = list(D.batches(D.loader(split, 64, True, seed=3, with_index=True), "cpu", on_device=True))
    idx = torch.cat([b[2] for b in got])
    assert [len(b[0]) for b in got] == [64, 64, 64, 8] and torch.equal(idx.sort().values, torch.arange(200))
    x = torch.cat([b[0] for b in got])
    assert torch.equal(x, D.as_float(split.x)[idx])


def test_validation_hook_stops_early_only_with_a_patience():
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    assert type(validation_hook(x, y)) is Validation and type(validation_hook(x, y, None)) is Validation
    hook = validation_hook(x, y, 2)
    assert isinstance(hook, EarlyStopping) and hook.patience == 2
    assert validation_hook(x, y, 2) is not hook  # a fresh hook (its own best weights) per model


def test_cosine_schedule_anneals_the_lr_to_zero_over_the_epochs_and_constant_keeps_it():
    """The learning rate each epoch trains at: cosine from lr towards 0 over ``epochs``; constant: lr."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    cosine = [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]  # 0.1, 0.085, 0.05, 0.015
    for schedule, expected in (("cosine", cosine), ("constant", [0.1] * 4)):
        cfg = TrainConfig(epochs=4, lr=0.1, lr_schedule=schedule)
        opt = make_optimizer(params, cfg)
        steps = make_schedule(opt, cfg)
        seen = []
        for _ in range(cfg.epochs):
            seen.append(opt.param_groups[0]["lr"])
            opt.step()  # an epoch's training (zero gradients: the parameter stays), then the schedule's step
            if steps is not None:
                steps.step()
        assert seen == pytest.approx(expected)
        assert (schedule == "constant") == (steps is None)


def test_a_cosine_run_differs_from_a_constant_one_and_repeats_exactly(mnist):
    a, b, c = _run(mnist, lr_schedule="cosine"), _run(mnist, lr_schedule="cosine"), _run(mnist)
    assert [h["train_loss"] for h in a.history] == [h["train_loss"] for h in b.history]
    assert a.history[0]["train_loss"] == c.history[0]["train_loss"]  # the first epoch runs at the full lr
    assert not all(torch.equal(p, q) for p, q in zip(a.model.parameters(), c.model.parameters()))
