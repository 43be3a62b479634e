"""Units of the plan: obtained once, dependencies first; one seeded store entry each; a read of an undeclared unit
stops the run; a unit is trained at most once (a lock per key); the makespan of N workers on hand cases."""

from __future__ import annotations

import copy
import threading

import pytest
import torch

from lib import cache
from lib import plan as P
from lib import units as U
from lib.errors import ConfigError
from lib.runtime import seed_everything

MODEL = U.Model("mnist_cnn", (1, 28, 28), 10)


def _trains(name: str, log: list, seeded: bool = True):
    """A fit that trains one tiny module through the store (its weight: the seed's first draw)."""

    def fit(units: U.Units) -> torch.nn.Module:
        log.append(name)
        for dep in units.by_name[name].deps:
            units.get(dep)
        torch.manual_seed(0)  # a unit's initial weights follow from its seed
        layer = torch.nn.Linear(1, 1)

        def train() -> dict:
            seed_everything(7)
            with torch.no_grad():
                layer.weight.fill_(torch.rand(()).item())
            return {}

        cache.cached(f"whatever {name}", {"layer": layer}, train, key=units.cfg, seeded=seeded)
        return layer

    return fit


def _plan(log: list, **deps) -> P.StagePlan:
    plan = P.StagePlan("toy", "smoke", 100)
    for name in ("a", "b", "c"):
        plan.add(name, MODEL, 1, 100, 1, 10, _trains(name, log), tuple(deps.get(name, ())))
    return plan


def test_a_unit_is_obtained_once_after_the_units_it_builds_on(tmp_path):
    cache.open_store(tmp_path / "toy")
    log: list[str] = []
    units = U.Units("toy", _plan(log, c=("a",)).models, "cfg", lambda: None)
    first = units.get("c")
    assert log == ["a", "c"] and units.get("c") is first and log == ["a", "c"]
    assert cache.units_obtained() == ["a", "c"]
    stored = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "toy").glob("*.pt"))
    assert stored == ["a", "c"]  # stored under the unit's name, whatever the fit called it


def test_a_unit_loads_what_another_process_trained_under_the_same_key(tmp_path):
    cache.open_store(tmp_path / "toy")
    trained = U.Units("toy", _plan([]).models, "cfg", lambda: None).get("b").weight.item()
    cache.open_store(tmp_path / "toy")  # a new process: the key follows from the unit's inputs alone
    assert U.Units("toy", _plan([]).models, "cfg", lambda: None).get("b").weight.item() == trained
    assert cache.runs()[-1]["loaded"]
    cache.open_store(tmp_path / "toy")
    U.Units("toy", _plan([]).models, "other cfg", lambda: None).get("b")
    assert not cache.runs()[-1]["loaded"]  # other inputs, another key


def test_reading_a_unit_not_declared_as_a_dependency_stops_the_run():
    cache.open_store(None)
    plan = P.StagePlan("toy", "smoke", 100)
    plan.add("a", MODEL, 1, 100, 1, 10, _trains("a", []))
    plan.add("b", MODEL, 1, 100, 1, 10, lambda u: u.get("a"))
    with pytest.raises(U.PlanDrift, match="unit 'b' reads 'a', which it does not list"):
        U.Units("toy", plan.models, "cfg", lambda: None).get("b")
    with pytest.raises(U.PlanDrift, match="asks for 'z', which its plan"):
        U.Units("toy", plan.models, "cfg", lambda: None).get("z")


def test_a_unit_stores_exactly_one_seeded_entry():
    cache.open_store(None)
    plan = P.StagePlan("toy", "smoke", 100)
    plan.add("unseeded", MODEL, 1, 100, 1, 10, _trains("unseeded", [], seeded=False))
    plan.add("nothing", MODEL, 1, 100, 1, 10, lambda u: None)

    def twice(u: U.Units) -> None:
        for k in range(2):
            cache.cached(f"part {k}", {}, lambda: {}, seeded=True)

    plan.add("twice", MODEL, 1, 100, 1, 10, twice)
    units = U.Units("toy", plan.models, "cfg", lambda: None)
    with pytest.raises(cache.UnitError, match="trains unseeded"):
        units.get("unseeded")
    with pytest.raises(cache.UnitError, match="trained no model through the store"):
        units.get("nothing")
    with pytest.raises(cache.UnitError, match="stores a second model"):
        units.get("twice")


def test_a_plan_lists_dependencies_before_their_units_and_names_once():
    plan = P.StagePlan("toy", "smoke", 100)
    plan.add("a", MODEL, 1, 100, 1, 10, lambda u: None)
    with pytest.raises(ConfigError, match="builds on \\['b'\\], not listed before it"):
        plan.add("c", MODEL, 1, 100, 1, 10, lambda u: None, ("b",))
    plan.models.pop()
    with pytest.raises(ConfigError, match="lists 'a' twice"):
        plan.add("a", MODEL, 1, 100, 1, 10, lambda u: None)


def test_a_probe_stops_at_the_key_and_load_only_never_trains(tmp_path):
    cache.open_store(tmp_path / "toy")
    units = U.Units("toy", _plan([], b=("a",)).models, "cfg", lambda: None)
    with pytest.raises(cache.Probed) as missing, cache.probing("a"):
        units.get("a")
    assert not missing.value.stored and not list((tmp_path / "toy").glob("*.pt"))
    with pytest.raises(cache.NotStored), cache.load_only():
        units.get("a")
    units.get("a")
    with pytest.raises(cache.Probed) as found, cache.probing("a"):
        U.Units("toy", _plan([]).models, "cfg", lambda: None).get("a")
    assert found.value.stored


def test_two_processes_wanting_one_entry_train_it_once(tmp_path):
    """The lock per key: the second waits for the first, then loads what it trained."""
    cache.open_store(tmp_path / "toy")
    started, calls = threading.Event(), []

    def slow() -> dict:
        calls.append(1)
        started.set()
        threading.Event().wait(0.5)
        return {}

    layer = torch.nn.Linear(1, 1)
    twin = copy.deepcopy(layer)  # the same initial weights: the same key

    def obtain(module: torch.nn.Module) -> dict:
        return cache.cached("one", {"l": module}, slow, seeded=True)

    first = threading.Thread(target=obtain, args=(layer,))
    first.start()
    assert started.wait(5)
    record = obtain(twin)
    first.join()
    assert len(calls) == 1 and record["loaded"]


def _job(name: str, seconds: float, *deps: str, exclusive: bool = False) -> U.Job:
    return U.Job(name, seconds, deps, exclusive)


def test_the_makespan_of_a_chain_is_its_length_whatever_the_workers():
    chain = [_job("a", 10), _job("b", 20, "a"), _job("c", 5, "b")]
    assert [U.schedule(chain, n) for n in (1, 2, 8)] == [35, 35, 35]
    assert U.critical_path(chain) == 35


def test_independent_units_divide_over_the_workers_and_a_timing_unit_runs_alone():
    flat = [_job(str(i), 10) for i in range(8)]
    assert [U.schedule(flat, n) for n in (1, 2, 4, 8, 16)] == [80, 40, 20, 10, 10]
    with_timing = [*flat[:4], _job("timing", 10, exclusive=True)]
    assert U.schedule(with_timing, 4) == 20  # four at once, then the timing run with the machine to itself
    rows = U.makespan(flat, [1, 2])
    assert rows[1] == {"workers": 2, "makespan_s": 40, "critical_path_s": 10, "work_over_n_s": 40}


def test_the_longest_chain_goes_first():
    """Critical-path list scheduling: the long chain starts at once, the short jobs fill the other worker."""
    jobs = [_job("s1", 5), _job("s2", 5), _job("long1", 10), _job("long2", 10, "long1")]
    assert U.schedule(jobs, 2) == 20
    with pytest.raises(ConfigError, match="cycle"):
        U.schedule([_job("x", 1, "y"), _job("y", 1, "x")], 1)
