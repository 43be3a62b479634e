"""Units of the plan: every model a stage trains is a :class:`Unit`, named, with what it builds on and how it is
trained; :class:`Units` obtains them (from the model store, or by training them) for a stage's ``run`` and for a
worker of :mod:`lib.train_units` alike.

A unit's ``fit(units)`` reads the stage's config and prepared data from ``units`` (``units.cfg``, ``units.data``),
the units it builds on through ``units.get(name)``, and trains its model through :func:`lib.cache.cached` (directly,
or by :func:`lib.train.train`'s ``cache_as``) exactly once, seeded: its store key then follows from what it is
given alone (config, seed, data split, its dependencies' weights and the code that trains), so any process can
train any unit whose dependencies are stored, and the stage's run later finds it under the same key. The stage's
``plan(cfg)`` lists its units (:class:`lib.plan.StagePlan`), and its ``run`` obtains every model through them, so
plan and run cannot drift: a model trained outside a unit, or a unit never obtained, stops the run.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lib import cache
from lib.errors import ConfigError


class PlanDrift(RuntimeError):
    """A stage trained a model outside its plan's units, or did not obtain a unit its plan lists."""


@dataclass(frozen=True)
class Model:
    """A network architecture as the throughput probe builds it."""

    arch: str
    shape: tuple
    classes: int
    options: tuple = ()  # (name, value) pairs

    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.arch}({opts}) {'x'.join(map(str, self.shape))}"


@dataclass(frozen=True)
class Unit:
    """One model of a stage's plan: its name in the model store, its cost, the units it builds on and how it is
    trained (``fit``, see the module's docstring). ``exclusive``: a timing run, trained with the machine to
    itself (no other unit beside it)."""

    name: str
    model: Model
    epochs: int
    examples: int
    passes: float
    batch_size: int
    units: float = 0.0  # clean-epoch units (lib.plan)
    fit: Callable[[Units], Any] | None = field(default=None, compare=False, repr=False)
    deps: tuple[str, ...] = ()
    exclusive: bool = False

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "model": self.model.label(),
            "epochs": self.epochs,
            "examples": self.examples,
            "passes": self.passes,
            "batch_size": self.batch_size,
            "units": self.units,
            "deps": list(self.deps),
            "exclusive": self.exclusive,
        }


class Threads:
    """The torch threads a unit trains with (``profiles/executor.yaml``'s ``threads_per_worker``): fixed per profile,
    so a model comes out the same whether a worker of :mod:`lib.train_units` or the stage's own run trains it, on
    any machine (the thread count changes float results in their last bits). None: leave torch's setting."""

    count: int | None = None

    @classmethod
    @contextmanager
    def training(cls) -> Iterator[None]:
        import torch

        before = torch.get_num_threads()
        if cls.count is not None:
            torch.set_num_threads(cls.count)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class Units:
    """A stage's units under one config: ``get(name)`` returns what the unit's ``fit`` returns, obtained once
    (its dependencies first). ``prepare()`` loads the data the fits read (``units.data``), once."""

    def __init__(self, stage: str, units: Sequence[Unit], cfg: Any, prepare: Callable[[], Any]):
        self.stage, self.cfg, self._prepare = stage, cfg, prepare
        self.by_name = {u.name: u for u in units}
        self._results: dict[str, Any] = {}
        self._fitting: list[str] = []  # the units whose fit is running, innermost last
        self._data: Any = None
        self._prepared = False

    @property
    def data(self) -> Any:
        if not self._prepared:
            self._data, self._prepared = self._prepare(), True
        return self._data

    def get(self, name: str) -> Any:
        """The unit ``name``'s result: from this run if obtained already, else its ``fit`` (which loads the model
        from the store or trains it)."""
        if name not in self.by_name:
            raise PlanDrift(f"{self.stage} asks for '{name}', which its plan(cfg) does not list")
        if self._fitting and name not in dependencies(list(self.by_name.values()), self._fitting[-1]):
            raise PlanDrift(
                f"{self.stage}'s unit '{self._fitting[-1]}' reads '{name}', which it does not list among the units it "
                "builds on (deps)"
            )
        if name in self._results:
            return self._results[name]
        unit = self.by_name[name]
        for dep in unit.deps:
            self.get(dep)
        self._fitting.append(name)
        try:
            with cache.unit_scope(unit.name), Threads.training():
                result = unit.fit(self)
        finally:
            self._fitting.pop()
        self._results[name] = result
        return result

    def obtained(self) -> list[str]:
        return list(self._results)


def dependencies(units: Sequence[Unit], name: str) -> list[str]:
    """Every unit ``name`` builds on, directly or not, in the plan's order."""
    by_name = {u.name: u for u in units}
    needed: set[str] = set()
    todo = list(by_name[name].deps)
    while todo:
        dep = todo.pop()
        if dep not in needed:
            needed.add(dep)
            todo += by_name[dep].deps
    return [u.name for u in units if u.name in needed]


def check(units: Sequence[Unit], stage: str) -> None:
    """Names unique, every dependency listed before the unit that builds on it (so the plan's order is a
    training order and has no cycle), every unit with a ``fit``."""
    seen: set[str] = set()
    for u in units:
        if u.name in seen:
            raise ConfigError(f"{stage}'s plan lists '{u.name}' twice")
        missing = [d for d in u.deps if d not in seen]
        if missing:
            raise ConfigError(f"{stage}'s unit '{u.name}' builds on {missing}, not listed before it")
        seen.add(u.name)


# --------------------------------------------------------------------------------------------------
# Makespan: how long N workers take, from each unit's estimated seconds


@dataclass(frozen=True)
class Job:
    """A unit of any stage as a scheduler sees it: its id ``stage/name``, estimated seconds, dependencies."""

    id: str
    seconds: float
    deps: tuple[str, ...] = ()
    exclusive: bool = False


def _ordered(jobs: Sequence[Job]) -> list[Job]:
    """``jobs`` in a dependency order (each after the jobs it builds on; those not among ``jobs`` count as done)."""
    ids = {j.id for j in jobs}
    placed: set[str] = set()
    out: list[Job] = []
    left = list(jobs)
    while left:
        ready = [j for j in left if all(d in placed or d not in ids for d in j.deps)]
        if not ready:
            raise ConfigError(f"the dependencies of {', '.join(j.id for j in left)} form a cycle")
        out += ready
        placed |= {j.id for j in ready}
        left = [j for j in left if j.id not in placed]
    return [Job(j.id, j.seconds, tuple(d for d in j.deps if d in ids), j.exclusive) for j in out]


def critical_path(jobs: Sequence[Job]) -> float:
    """The longest chain of dependent jobs (seconds): no number of workers finishes sooner."""
    longest: dict[str, float] = {}
    for j in _ordered(jobs):
        longest[j.id] = j.seconds + max((longest[d] for d in j.deps), default=0.0)
    return max(longest.values(), default=0.0)


def _tails(jobs: Sequence[Job]) -> dict[str, float]:
    """Per job, the longest chain from its start to the end of anything that builds on it (list scheduling's
    priority: the job that holds up most goes first)."""
    children: dict[str, list[str]] = {j.id: [] for j in jobs}
    for j in jobs:
        for d in j.deps:
            children[d].append(j.id)
    tail: dict[str, float] = {}
    for j in reversed(jobs):
        tail[j.id] = j.seconds + max((tail[c] for c in children[j.id]), default=0.0)
    return tail


def schedule(jobs: Sequence[Job], workers: int) -> float:
    """The makespan (seconds) of list scheduling on ``workers`` workers: whenever one is free, the ready job with
    the longest chain behind it starts; an exclusive job (a timing run) waits for an idle machine and holds it."""
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")
    jobs = _ordered(jobs)
    tail = _tails(jobs)
    by_id = {j.id: j for j in jobs}
    waiting = {j.id: set(j.deps) for j in jobs}
    ready = [(-tail[j.id], i, j.id) for i, j in enumerate(jobs) if not j.deps]
    heapq.heapify(ready)
    running: list[tuple[float, str]] = []  # (finish time, id)
    now, order = 0.0, {j.id: i for i, j in enumerate(jobs)}
    while ready or running:
        started = True
        while ready and started:
            started = False
            _, _, jid = ready[0]
            job = by_id[jid]
            if job.exclusive and running or running and by_id[running[0][1]].exclusive:
                break
            if len(running) < workers:
                heapq.heappop(ready)
                heapq.heappush(running, (now + job.seconds, jid))
                started = True
        now, done = heapq.heappop(running)
        for j in jobs:
            if done in waiting[j.id]:
                waiting[j.id].discard(done)
                if not waiting[j.id]:
                    heapq.heappush(ready, (-tail[j.id], order[j.id], j.id))
    return now


def makespan(jobs: Sequence[Job], workers: Iterable[int]) -> list[dict]:
    """Per number of workers: the scheduled makespan, and its two bounds (the critical path; total work / N)."""
    total, chain = sum(j.seconds for j in jobs), critical_path(jobs)
    return [
        {"workers": n, "makespan_s": schedule(jobs, n), "critical_path_s": chain, "work_over_n_s": total / n}
        for n in workers
    ]
