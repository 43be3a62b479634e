"""The evaluation store: an attack on the same model, data and settings runs once; a re-run loads
its examples and continues with the random state the computing run left behind."""

from __future__ import annotations

import pytest
import torch

from lib import attacks as A
from lib import cache
from lib import models as M
from lib.evaluate import accuracy_per_iteration, adversarial_examples, robust_accuracy

CALLS: list[int] = []


def counted_pgd(model, x, y, **params):
    """Our PGD (random start: it draws from the generators), counting its calls."""
    CALLS.append(len(y))
    return A.pgd(model, x, y, **params)


@pytest.fixture
def store(tmp_path):
    CALLS.clear()
    yield cache.open_store(tmp_path / "models" / "stage")
    cache.open_store(None)


def _model(seed=0):
    return M.build("mnist_cnn", (1, 28, 28), 10, seed=seed, width=4, hidden=16)


def _data(n=24):
    g = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _attack(model, x, y, eps=0.1):
    torch.manual_seed(3)
    x_adv = adversarial_examples(model, x, y, counted_pgd, batch_size=10, eps=eps, steps=3, random_start=True)
    return x_adv, torch.rand(4)  # the draw shows the random state left behind


def test_a_second_run_loads_the_examples_and_continues_the_same_draws(store):
    model, (x, y) = _model(), _data()
    first, draw1 = _attack(model, x, y)
    assert len(CALLS) == 3 and len(list(store.evaluations.glob("adversarial_examples-*.pt"))) == 1
    second, draw2 = _attack(model, x, y)
    assert len(CALLS) == 3, "the attack ran again"
    assert torch.equal(first, second) and torch.equal(draw1, draw2)


def test_without_a_store_the_same_numbers_are_computed_and_nothing_is_written(tmp_path):
    cache.open_store(None)
    model, (x, y) = _model(), _data()
    plain, draw0 = _attack(model, x, y)
    cache.open_store(tmp_path / "models" / "stage")
    try:
        stored, draw1 = _attack(model, x, y)
        loaded, draw2 = _attack(model, x, y)
    finally:
        cache.open_store(None)
    assert torch.equal(plain, stored) and torch.equal(plain, loaded)
    assert torch.equal(draw0, draw1) and torch.equal(draw0, draw2)


@pytest.mark.parametrize("change", ["weights in place", "other model", "eps", "data", "random state"])
def test_what_determines_the_examples_changes_the_key(store, change):
    model, (x, y) = _model(), _data()
    _attack(model, x, y)
    if change == "weights in place":
        with torch.no_grad():
            next(model.parameters()).mul_(1.01)
        _attack(model, x, y)
    elif change == "other model":
        _attack(_model(seed=1), x, y)
    elif change == "eps":
        _attack(model, x, y, eps=0.2)
    elif change == "data":
        _attack(model, x.flip(0), y.flip(0))
    else:
        torch.manual_seed(4)
        adversarial_examples(model, x, y, counted_pgd, batch_size=10, eps=0.1, steps=3, random_start=True)
    assert len(CALLS) == 6


def test_a_corrupt_entry_is_reported_and_computed_again(store, capsys):
    model, (x, y) = _model(), _data()
    first, draw1 = _attack(model, x, y)
    (entry,) = store.evaluations.glob("*.pt")
    entry.write_bytes(b"not a checkpoint")
    again, draw2 = _attack(model, x, y)
    assert f"store entry {entry} is corrupt or does not fit this run; computing it again" in capsys.readouterr().out
    assert len(CALLS) == 6 and torch.equal(first, again) and torch.equal(draw1, draw2)


def test_a_flipped_byte_in_a_stored_evaluation_is_caught_and_computed_again(store, capsys):
    from tests.test_cache import flip_byte_of

    model, (x, y) = _model(), _data()
    first, draw1 = _attack(model, x, y)
    (entry,) = store.evaluations.glob("*.pt")
    flip_byte_of(entry, first)
    again, draw2 = _attack(model, x, y)
    assert "does not match the digest recorded when it was written; computing it again" in capsys.readouterr().out
    assert len(CALLS) == 6 and torch.equal(first, again) and torch.equal(draw1, draw2)
    assert [e["path"] for e in cache.rebuilt()] == [str(entry)]


def test_retrain_ignores_the_stored_evaluations(tmp_path):
    CALLS.clear()
    model, (x, y) = _model(), _data()
    try:
        cache.open_store(tmp_path / "models" / "stage")
        _attack(model, x, y)
        cache.open_store(tmp_path / "models" / "stage", retrain=True)
        _attack(model, x, y)
    finally:
        cache.open_store(None)
    assert len(CALLS) == 6


def test_robust_accuracy_and_the_iteration_curve_come_from_the_store(store):
    model, (x, y) = _model(), _data()

    def run():
        torch.manual_seed(5)  # as a stage run does: the same draws before each evaluation
        return robust_accuracy(model, x, y, counted_pgd, eps=0.1, steps=2), accuracy_per_iteration(
            model, x, y, 0.1, 3, 0.05
        )

    first = run()
    entries = len(list(store.evaluations.glob("*.pt")))
    assert run() == first
    assert len(CALLS) == 1 and entries == 2 and len(list(store.evaluations.glob("*.pt"))) == 2
