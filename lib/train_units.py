"""``python -m lib.train_units [STAGE ...] [--profile P] [--executor local|slurm] [-j N]``: train every unit of the
plan that the model store lacks, in dependency order, then the stages' notebooks only load.

The store is the meeting point: each unit (:mod:`lib.units`) is trained by one worker process into
``models/<stage>/`` (an entry written whole, under a lock per key, so a unit is trained at most once), and
what finished is read back from the store, never copied around. First every unit is probed (its key computed,
the units it builds on loaded): only the missing ones are trained.

- ``local``: ``-j N`` worker processes on this machine (default: one per core), each with
  ``threads_per_worker`` torch threads (``profiles/executor.yaml``: 1 on the CPU profiles, so a model is the same
  whoever trains it; null: cores / N); a line per
  unit as it ends, units done / total and an ETA from the plan's estimates; a unit's log in
  ``models/.logs/<stage>/``. A timing unit (``exclusive``) runs with the machine to itself.
- ``slurm``: submitit, one job array per wave of ready units, each unit's partition, GPUs, CPUs and time limit
  from ``profiles/executor.yaml`` (the limit: the plan's estimate x a margin); the store must be on a
  filesystem the nodes share; submitit's logs in ``models/.submitit/``.

A failed or killed unit: the command ends with one line per failed unit (stage, name, the log to read) and exit
status 1; the units that build on it are not started; a re-run trains only what is still missing.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from lib import cache, stages
from lib import units as U
from lib.errors import ConfigError, require
from lib.params import PARAMS_FILE, build_config, checked_parameters, config_class, profiles_file
from lib.runtime import QUIET, REPO_ROOT, Acceleration, DryRun, repo_relative

PREPARED = REPO_ROOT / "data" / "prepared"
MODELS = REPO_ROOT / "models"
EXECUTORS = ("local", "slurm")


@dataclass
class Task:
    """One unit as the executor schedules it."""

    stage: str
    unit: U.Unit
    estimate_s: float = 0.0
    state: str = "missing"  # stored | missing | trained | failed | blocked
    log: Path | None = None
    seconds: float = 0.0

    @property
    def id(self) -> str:
        return f"{self.stage}/{self.unit.name}"

    @property
    def deps(self) -> list[str]:
        return [f"{self.stage}/{d}" for d in self.unit.deps]


@dataclass
class Settings:
    """What a worker needs to rebuild a stage's units: the profile, parameters file, data and store roots."""

    profile: str
    params_file: Path = PARAMS_FILE
    models_root: Path = MODELS
    data_dir: Path = PREPARED
    threads: int = 1

    def argv(self) -> list[str]:
        return [
            "--profile",
            self.profile,
            "--params",
            str(self.params_file),
            "--models",
            str(self.models_root),
            "--data",
            str(self.data_dir),
            "--threads-per-worker",
            str(self.threads),
        ]


def stage_units(stage: str, settings: Settings) -> U.Units:
    """``stage``'s units under the settings' profile, over the prepared data, with its model store opened."""
    params = checked_parameters(stage, settings.profile, settings.params_file)
    module = stages.get(stage).load()
    cfg = build_config(config_class(stage), params)
    Acceleration.configure(params["profile"], params["deterministic"])
    DryRun.configure(False)
    cache.open_store(Path(settings.models_root) / stage, params["retrain"])
    plan = module.plan(cfg)
    return U.Units(stage, plan.models, cfg, lambda: module.prepare(cfg, settings.data_dir))


def probe(stage: str, settings: Settings) -> dict[str, str]:
    """Per unit of ``stage``: ``stored`` (its entry is in the store) or ``missing``; a unit that builds on a
    missing one is missing (its key needs their weights)."""
    units = stage_units(stage, settings)
    state: dict[str, str] = {}
    for unit in units.by_name.values():
        if any(state[d] != "stored" for d in unit.deps):
            state[unit.name] = "missing"
            continue
        try:
            with cache.load_only(), cache.probing(unit.name):
                units.get(unit.name)
            state[unit.name] = "stored"  # a store without a root (never here)
        except cache.Probed as found:
            state[unit.name] = "stored" if found.stored else "missing"
        except cache.NotStored as lost:  # a dependency's entry was damaged (and removed): train both again
            state[lost.name] = state[unit.name] = "missing"
    return state


def train_one(stage: str, name: str, settings: Settings) -> str:
    """Train the unit ``name`` of ``stage`` into the store (the units it builds on are loaded, never trained);
    returns one line saying what happened. The body of a worker, locally and on a SLURM node."""
    import torch

    torch.set_num_threads(settings.threads)
    U.Threads.count = settings.threads
    units = stage_units(stage, settings)
    with cache.load_only():
        for dep in U.dependencies(list(units.by_name.values()), name):
            units.get(dep)
    started = time.perf_counter()
    units.get(name)
    run = cache.runs()[-1]
    what = "loaded (trained by another worker)" if run["loaded"] else f"trained in {run['seconds']:.0f} s"
    return f"{stage}: {name}: {what} ({time.perf_counter() - started:.0f} s with loading)"


# --------------------------------------------------------------------------------------------------
# The plan, the estimates, the probe


def tasks_of(names: list[str], settings: Settings, estimate: bool = True) -> list[Task]:
    """Every unit of the stages ``names``, its state in the store, and (``estimate``) its estimated seconds."""
    from lib import plan as P

    plans = P.plans(settings.profile, names, settings.params_file)
    out = [
        Task(plan.stage, u, 0.0, state) for plan in plans for u, state in zip(plan.models, probe_all(plan, settings))
    ]
    if estimate and any(t.state == "missing" for t in out):
        throughput = P.throughputs(plans)
        seconds = {p.stage: p.seconds(throughput) | P.recorded_seconds(p) for p in plans}
        for t in out:
            t.estimate_s = seconds[t.stage][t.unit.name]
    return out


def probe_all(plan, settings: Settings) -> list[str]:
    """:func:`probe`'s states in the plan's order."""
    state = probe(plan.stage, settings)
    return [state[u.name] for u in plan.models]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def makespan(tasks: list[Task], workers: int) -> float:
    """The estimated wall time of training ``tasks`` on ``workers`` workers (their dependencies done)."""
    jobs = [U.Job(t.id, t.estimate_s, tuple(t.deps), t.unit.exclusive) for t in tasks]
    return U.schedule(jobs, workers) if jobs else 0.0


# --------------------------------------------------------------------------------------------------
# Executors


def _log_path(settings: Settings, task: Task) -> Path:
    folder = Path(settings.models_root) / ".logs" / task.stage
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{cache.slug(task.unit.name)}.log"


class Local:
    """``workers`` processes on this machine, ``python -m lib.train_units --worker STAGE UNIT`` each."""

    def __init__(self, workers: int, settings: Settings):
        self.workers, self.settings = workers, settings

    def _start(self, task: Task) -> subprocess.Popen:
        task.log = _log_path(self.settings, task)
        threads = str(self.settings.threads)
        env = {
            **os.environ,
            "OMP_NUM_THREADS": threads,
            "MKL_NUM_THREADS": threads,
            "PYTHONUNBUFFERED": "1",
            QUIET: "0",
        }
        argv = [sys.executable, "-m", "lib.train_units", "--worker", task.stage, task.unit.name, *self.settings.argv()]
        with open(task.log, "w") as log:
            return subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)

    def run(self, tasks: list[Task], progress: Progress) -> None:
        pending = [t for t in tasks if t.state == "missing"]
        state = {t.id: t.state for t in tasks}
        running: dict[str, tuple[Task, subprocess.Popen, float]] = {}
        try:
            while pending or running:
                for task in _blocked(pending, state):
                    pending.remove(task)
                    progress.blocked(task)
                for task in list(pending):
                    if len(running) >= self.workers or any(state.get(d) != "stored" for d in task.deps):
                        continue
                    if (task.unit.exclusive and running) or any(t.unit.exclusive for t, _, _ in running.values()):
                        continue
                    pending.remove(task)
                    running[task.id] = (task, self._start(task), time.perf_counter())
                    progress.started(task)
                time.sleep(0.2)
                for tid, (task, proc, t0) in list(running.items()):
                    if proc.poll() is None:
                        continue
                    del running[tid]
                    task.seconds = time.perf_counter() - t0
                    task.state = state[tid] = "stored" if proc.returncode == 0 else "failed"
                    progress.finished(task, proc.returncode, pending + [t for t, _, _ in running.values()])
        finally:
            for _, proc, _ in running.values():
                proc.kill()
                proc.wait()


def _blocked(pending: list[Task], state: dict[str, str]) -> list[Task]:
    """The pending units that build on a failed or blocked one."""
    out = [t for t in pending if any(state.get(d) in ("failed", "blocked") for d in t.deps)]
    for t in out:
        state[t.id] = t.state = "blocked"
    return out


def _slurm_train(stage: str, name: str, settings: Settings) -> str:
    """A SLURM job's body (pickled by submitit): :func:`train_one` with the node's threads."""
    os.chdir(REPO_ROOT)
    return train_one(stage, name, settings)


def slurm_resources(profile: str, params_file: Path, estimate_s: float) -> dict:
    """submitit's parameters of one unit: partition, GPUs, CPUs and time limit (``profiles/executor.yaml``)."""
    res = executor_settings(profile, params_file)["slurm"]
    minutes = max(res["min_minutes"], math.ceil(res["time_margin"] * estimate_s / 60))
    out = {
        "timeout_min": int(minutes),
        "cpus_per_task": int(res["cpus_per_unit"]),
        "slurm_array_parallelism": int(res["array_parallelism"]),
    }
    if res["gpus_per_unit"]:
        out["gpus_per_node"] = int(res["gpus_per_unit"])
    if res["partition"]:
        out["slurm_partition"] = res["partition"]
    return out


class Slurm:
    """One submitit job array per wave of ready units; results read back from the shared store."""

    def __init__(self, settings: Settings):
        self.settings = settings

    def run(self, tasks: list[Task], progress: Progress) -> None:
        import submitit

        folder = Path(self.settings.models_root) / ".submitit"
        pending = [t for t in tasks if t.state == "missing"]
        state = {t.id: t.state for t in tasks}
        while pending:
            for task in _blocked(pending, state):
                pending.remove(task)
                progress.blocked(task)
            ready = [t for t in pending if all(state.get(d) == "stored" for d in t.deps)]
            if not ready:
                break
            wave = [t for t in ready if not t.unit.exclusive] or ready[:1]  # a timing unit: alone, a node to itself
            for task in wave:
                pending.remove(task)
                progress.started(task)
            executor = submitit.AutoExecutor(folder=folder / "%j", cluster="slurm")
            longest = max(t.estimate_s for t in wave)
            resources = slurm_resources(self.settings.profile, self.settings.params_file, longest)
            if wave[0].unit.exclusive:
                resources["slurm_exclusive"] = True
            executor.update_parameters(name="train_units", **resources)
            jobs = executor.map_array(
                _slurm_train, [t.stage for t in wave], [t.unit.name for t in wave], [self.settings] * len(wave)
            )
            t0 = time.perf_counter()
            for task, job in zip(wave, jobs):
                try:
                    job.result()
                    ok = True
                except Exception:  # noqa: BLE001 - a failed job of any kind is reported with its log
                    ok = False
                task.log = Path(job.paths.stderr)
                task.seconds = time.perf_counter() - t0
                task.state = state[task.id] = "stored" if ok else "failed"
                progress.finished(task, 0 if ok else 1, pending)


class Progress:
    """Prints a line per unit as it starts and ends: units done / total, the ETA from the plan's estimates
    (scaled by how the finished units compared with theirs)."""

    def __init__(self, tasks: list[Task], workers: int):
        self.total = sum(t.state == "missing" for t in tasks)
        self.done, self.workers, self.t0 = 0, workers, time.perf_counter()
        self.actual = self.estimated = 0.0

    def started(self, task: Task) -> None:
        print(f"  start  {task.id} (estimate {_minutes(task.estimate_s)})", flush=True)

    def finished(self, task: Task, rc: int, left: list[Task]) -> None:
        self.done += 1
        if rc == 0:
            self.actual += task.seconds
            self.estimated += task.estimate_s
        scale = self.actual / self.estimated if self.estimated > 0 else 1.0
        eta = makespan(left, self.workers) * scale
        what = f"done in {_minutes(task.seconds)}" if rc == 0 else f"FAILED (exit {rc}; log {repo_relative(task.log)})"
        elapsed = time.perf_counter() - self.t0
        print(
            f"[{self.done}/{self.total}] {task.id}: {what}; elapsed {_minutes(elapsed)}, ETA {_minutes(eta)}",
            flush=True,
        )

    def blocked(self, task: Task) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {task.id}: not started (a unit it builds on failed)", flush=True)


def executor_settings(profile: str, params_file: Path = PARAMS_FILE) -> dict:
    """The profile's block of ``profiles/executor.yaml``."""
    import yaml

    path = profiles_file("executor", params_file)
    require(path.exists(), f"no {repo_relative(path)}: the executor's settings per profile")
    blob = yaml.safe_load(path.read_text()) or {}
    require(profile in blob, f"{repo_relative(path)} has no '{profile}' block")
    return blob[profile]


def training_threads(profile: str, params_file: Path = PARAMS_FILE) -> int | None:
    """The profile's fixed ``threads_per_worker`` (None: not fixed)."""
    return executor_settings(profile, params_file).get("threads_per_worker")


def threads_per_worker(workers: int, profile: str, params_file: Path) -> int:
    configured = training_threads(profile, params_file)
    if configured is not None:
        require(isinstance(configured, int) and configured >= 1, f"threads_per_worker must be >= 1, got {configured}")
        return configured
    return max(1, (os.cpu_count() or 1) // workers)


def train_all(
    names: list[str], settings: Settings, executor: str = "local", workers: int | None = None, estimate: bool = True
) -> int:
    """Train every missing unit of the stages ``names``; 0 when all are stored at the end, 1 otherwise."""
    require(executor in EXECUTORS, f"unknown executor '{executor}'; choose one of {', '.join(EXECUTORS)}")
    workers = workers or os.cpu_count() or 1
    require(workers >= 1, f"-j must be >= 1, got {workers}")
    tasks = tasks_of(names, settings, estimate)
    missing = [t for t in tasks if t.state == "missing"]
    print(
        f"{len(tasks)} units in {len(names)} stages ({settings.profile} profile): {len(tasks) - len(missing)} in the "
        f"store, {len(missing)} to train by {executor}"
        + (f" with {workers} workers x {settings.threads} torch threads" if executor == "local" else ""),
        flush=True,
    )
    if missing and estimate:
        n = workers if executor == "local" else len(missing)
        print(
            f"expected: {_minutes(makespan(missing, n))} (the plan's estimates: recorded training times where the "
            "committed run has them, the throughput probe's otherwise)",
            flush=True,
        )
    if not missing:
        return 0
    progress = Progress(tasks, workers)
    (Local(workers, settings) if executor == "local" else Slurm(settings)).run(tasks, progress)
    failed = [t for t in tasks if t.state in ("failed", "blocked")]
    for t in failed:
        why = (
            f"failed, see {repo_relative(t.log)}" if t.state == "failed" else "not started: a unit it builds on failed"
        )
        print(f"error: unit '{t.unit.name}' of {t.stage} {why}", file=sys.stderr)
    trained = sum(t.state == "stored" for t in missing)
    print(f"{trained} of {len(missing)} units trained in {_minutes(time.perf_counter() - progress.t0)}", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", help="stages (default: all)")
    ap.add_argument("--profile", default=None, help="smoke | cpu | paper (default: params.yaml's)")
    ap.add_argument("--params", type=Path, default=PARAMS_FILE)
    ap.add_argument("--executor", default="local", help="local | slurm")
    ap.add_argument("-j", "--jobs", type=int, default=None, help="local worker processes (default: one per core)")
    ap.add_argument("--threads-per-worker", type=int, default=None, help="default: profiles/executor.yaml's")
    ap.add_argument("--models", type=Path, default=MODELS, help="model store root (default: models/)")
    ap.add_argument("--data", type=Path, default=PREPARED, help="prepared data (default: data/prepared)")
    ap.add_argument("--no-estimate", action="store_true", help="skip the throughput probe (no ETA)")
    ap.add_argument("--worker", nargs=2, metavar=("STAGE", "UNIT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        from lib.params import read_params

        profile = args.profile or read_params(args.params).get("profile")
        require(profile is not None, "no profile: pass --profile or set one in params.yaml")
        names = args.stages or stages.names()
        for name in names:
            stages.get(name)
        workers = args.jobs or os.cpu_count() or 1
        threads = args.threads_per_worker or threads_per_worker(workers, profile, args.params)
        settings = Settings(profile, args.params.resolve(), args.models.resolve(), args.data.resolve(), threads)
        if args.worker:
            print(train_one(*args.worker, settings), flush=True)
            return 0
        return train_all(names, settings, args.executor, args.jobs, not args.no_estimate)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: stopped; every unit trained so far is in the store, a re-run trains the rest", file=sys.stderr)
        return 128 + signal.SIGINT
    except Exception:
        if args.worker:  # the worker's log keeps the traceback; the coordinator names the log
            traceback.print_exc()
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
