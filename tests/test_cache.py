"""The model store: train once, load after; keys follow what determines a model; damage retrains."""

from __future__ import annotations

import pytest
import torch

from lib import cache
from lib import data as D
from lib import models as M
from lib.train import EarlyStopping, GeneratorSource, TrainConfig, train


@pytest.fixture
def store(tmp_path):
    yield cache.open_store(tmp_path / "models")
    cache.open_store(None)


def _split(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    return D.Split(torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g))


def _fit(split, lr=1e-3, name="tiny", **kw):
    torch.manual_seed(0)
    model = M.build("mnist_cnn", (1, 28, 28), 10, seed=0, width=4, hidden=16)
    loader = D.loader(split, 32, shuffle=True, seed=0, with_index=True)
    result = train(model, loader, TrainConfig(epochs=2, batch_size=32, lr=lr), cache_as=name, **kw)
    return model, result, torch.rand(3)  # the draw shows the random state left behind


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_second_run_loads_the_same_model_history_and_random_state(store, capsys):
    split = _split()
    m1, r1, draw1 = _fit(split)
    assert not r1.loaded and len(list(store.root.glob("tiny-*.pt"))) == 1
    epochs, acc = len(r1.history), 100 * r1.history[-1]["train_acc"]
    m2, r2, draw2 = _fit(split)
    assert r2.loaded
    trained, loaded = capsys.readouterr().out.strip().splitlines()[-2:]  # one line per model, name first
    assert trained.startswith("tiny: trained in") and f", {epochs} epochs, final train acc {acc:.1f}%" in trained
    assert loaded.startswith(f"tiny: loaded, {epochs} epochs, final train acc {acc:.1f}% (trained in")
    assert _same_weights(m1, m2)
    assert r1.history == r2.history and r1.seconds == r2.seconds
    assert torch.equal(draw1, draw2)


def test_without_a_store_nothing_is_written_and_results_match_the_stored_run(tmp_path):
    cache.open_store(None)
    m0, r0, draw0 = _fit(_split())
    cache.open_store(tmp_path / "models")
    try:
        m1, r1, draw1 = _fit(_split())
        assert not r1.loaded and _same_weights(m0, m1) and torch.equal(draw0, draw1)
    finally:
        cache.open_store(None)
    assert r0.history[-1]["train_loss"] == r1.history[-1]["train_loss"]


@pytest.mark.parametrize("change", ["lr", "data", "init"])
def test_what_determines_the_model_changes_the_key(store, change):
    _fit(_split())
    if change == "lr":
        _, r, _ = _fit(_split(), lr=2e-3)
    elif change == "data":
        _, r, _ = _fit(_split(seed=1))
    else:
        torch.manual_seed(5)
        model = M.build("mnist_cnn", (1, 28, 28), 10, seed=5, width=4, hidden=16)
        r = train(
            model,
            D.loader(_split(), 32, True, 0, with_index=True),
            TrainConfig(epochs=2, batch_size=32),
            cache_as="tiny",
        )
    assert not r.loaded
    assert len(list(store.root.glob("tiny-*.pt"))) == 2


def test_a_corrupt_entry_is_reported_and_retrained_never_used(store, capsys):
    split = _split()
    m1, _, _ = _fit(split)
    entry = next(store.root.glob("tiny-*.pt"))
    entry.write_bytes(entry.read_bytes()[:500])
    m2, r2, _ = _fit(split)
    assert f"store entry {entry} is corrupt or does not fit this run; computing it again" in capsys.readouterr().out
    assert not r2.loaded and _same_weights(m1, m2)
    assert cache.rebuilt() == [{"path": str(entry), "why": "is corrupt or does not fit this run"}]
    _, r3, _ = _fit(split)
    assert r3.loaded


def flip_byte_of(path, tensor: torch.Tensor) -> None:
    """Flip one byte in the middle of ``tensor``'s bytes inside the file at ``path``."""
    blob, raw = bytearray(path.read_bytes()), tensor.detach().contiguous().numpy().tobytes()
    at = blob.find(raw)
    assert at >= 0 and blob.find(raw, at + 1) < 0, "the tensor's bytes are not in the file exactly once"
    blob[at + len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(blob))


def test_a_flipped_byte_in_a_stored_models_weights_is_caught_and_retrained(store, capsys):
    split = _split()
    m1, _, draw1 = _fit(split)
    (entry,) = store.root.glob("tiny-*.pt")
    flip_byte_of(
        entry,
        m1.state_dict()["features.0.weight"]
        if "features.0.weight" in m1.state_dict()
        else next(iter(m1.state_dict().values())),
    )
    torch.load(entry, weights_only=True)  # torch itself reads the damaged file without a word
    m2, r2, draw2 = _fit(split)
    why = "does not match the digest recorded when it was written"
    assert f"store entry {entry} {why}; computing it again" in capsys.readouterr().out
    assert not r2.loaded and _same_weights(m1, m2) and torch.equal(draw1, draw2)
    assert cache.rebuilt() == [{"path": str(entry), "why": why}]
    _, r3, _ = _fit(split)
    assert r3.loaded, "the rebuilt entry loads"


def test_an_entry_written_before_digests_is_not_used(store):
    split = _split()
    m1, _, _ = _fit(split)
    (entry,) = store.root.glob("tiny-*.pt")
    blob = torch.load(entry, weights_only=True)
    del blob["digest"]
    torch.save(blob, entry)
    _, r2, _ = _fit(split)
    assert not r2.loaded and cache.rebuilt()[0]["why"] == "is unreadable or of another layout"


def test_retrain_ignores_the_store(store):
    split = _split()
    _fit(split)
    cache.open_store(store.root, retrain=True)
    _, r, _ = _fit(split)
    assert not r.loaded


def test_a_generator_trained_with_the_classifier_is_stored_too(store):
    split = _split()

    def run():
        torch.manual_seed(0)
        model = M.build("mnist_cnn", (1, 28, 28), 10, seed=0, width=4, hidden=16)
        gen = torch.nn.Conv2d(1, 1, 3, padding=1)
        source = GeneratorSource(
            lambda m, x, y: (x + 0.1 * torch.tanh(gen(x))).clamp(0, 1),
            torch.optim.SGD(gen.parameters(), lr=0.1, maximize=True),
        )
        source.gen = gen
        r = train(
            model,
            D.loader(split, 32, True, 0, with_index=True),
            TrainConfig(epochs=1, batch_size=32),
            source,
            cache_as="joint",
        )
        return gen, r

    g1, r1 = run()
    g2, r2 = run()
    assert r2.loaded and _same_weights(g1, g2)
    assert not torch.equal(g1.weight, torch.nn.Conv2d(1, 1, 3, padding=1).weight)


def test_early_stopping_stores_the_best_weights(store):
    split, val = _split(), _split(32, seed=3)
    torch.manual_seed(0)
    model = M.build("mnist_cnn", (1, 28, 28), 10, seed=0, width=4, hidden=16)
    stopper = EarlyStopping(val.x, val.y, patience=1)
    r = train(
        model,
        D.loader(split, 32, True, 0, with_index=True),
        TrainConfig(epochs=4, batch_size=32, lr=0.05),
        on_epoch_end=stopper,
        cache_as="stopped",
    )
    assert r.best_epoch == stopper.best_epoch
    assert all(torch.equal(v, stopper.state[k]) for k, v in model.state_dict().items())


def test_stale_temporary_files_are_removed_when_the_store_opens(tmp_path):
    root = tmp_path / "models"
    root.mkdir()
    (root / ".half.pt.tmp").write_bytes(b"x")
    cache.open_store(root)
    cache.open_store(None)
    assert not list(root.iterdir())


def _generator_fit(store_draw: list):
    """A fit that draws from the global generator without seeding itself (as the generator fits do)."""
    net = torch.nn.Linear(2, 2)
    net.weight.data.zero_()

    def fit():
        net.weight.data += torch.rand(2, 2)
        store_draw.append(torch.rand(1))

    cache.cached("unseeded", {"net": net}, fit, key="same")
    return net, torch.rand(1)


def test_an_unseeded_fit_keys_on_the_random_state_and_a_load_continues_its_draws(store):
    torch.manual_seed(1)
    a, after_a = _generator_fit([])
    torch.manual_seed(1)
    b, after_b = _generator_fit([])
    torch.manual_seed(2)
    c, _ = _generator_fit([])
    assert len(list(store.root.glob("unseeded-*.pt"))) == 2  # seed 2 is another run, not a hit
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, c.weight)
    assert torch.equal(after_a, after_b)  # loading restored the state training had left
    assert [r["loaded"] for r in cache.runs()] == [False, True, False] and cache.runs()[0]["name"] == "unseeded"


def test_a_run_through_the_store_draws_what_the_same_code_without_one_draws(tmp_path):
    cache.open_store(None)
    torch.manual_seed(1)
    _, plain = _generator_fit([])
    cache.open_store(tmp_path / "models")
    try:
        for _ in range(2):  # trains, then loads
            torch.manual_seed(1)
            _, stored = _generator_fit([])
            assert torch.equal(plain, stored)
    finally:
        cache.open_store(None)
