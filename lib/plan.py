"""``python -m lib.plan [--profile P] [STAGE ...] [--json]``: what each stage will train, and its cost.

Per stage, every model it trains (the name it has in the model store, epochs, training examples,
forward-backward passes per example), its cost in **clean-epoch units** (one unit = one clean
epoch of that model over the stage's training set: epochs x examples / training-set size x
passes), and an ETA on this machine's device from a throughput probe (a few timed training
batches of every kind of model; ``--no-probe`` skips it).

Each stage module's ``plan(cfg)`` lists what its ``run`` trains (``lib/stages/<stage>.py``); the dry run
(``lib.pipeline --dry-run``) trains exactly the models listed, which the tests check. Epochs are
the configured maximum (p4 stops early). Passes count the classifier's gradient passes: an attack
of s steps adds s; a generator's own step is counted as one pass of the classifier.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lib import dryrun, stages
from lib.errors import ConfigError, require
from lib.params import PARAMS_FILE, build_config, checked_parameters, config_class
from lib.units import Job, Model, Unit, check, makespan

IMAGE_SIZES = dryrun.SIZES  # train, test, shape, classes of every dataset at its real size


@dataclass
class StagePlan:
    """A stage's plan: its units (:class:`lib.units.Unit`), in a training order (each after those it builds on)."""

    stage: str
    profile: str
    train_examples: int  # the stage's training set, the unit's denominator
    models: list[Unit] = field(default_factory=list)

    def add(
        self,
        name: str,
        model: Model,
        epochs: int,
        examples: int,
        passes: float,
        batch_size: int,
        fit: Callable | None = None,
        deps: tuple[str, ...] = (),
        exclusive: bool = False,
    ) -> None:
        """One unit: its store name, the network, epochs x examples x passes (its cost), how it is trained and
        the units it builds on (listed before it)."""
        cost = round(epochs * examples / self.train_examples * passes, 2)
        self.models.append(Unit(name, model, epochs, examples, passes, batch_size, cost, fit, tuple(deps), exclusive))
        check(self.models, self.stage)

    @property
    def units(self) -> float:
        return round(sum(m.units for m in self.models), 1)

    def seconds(self, throughput: dict[Model, float]) -> dict[str, float]:
        """Each unit's estimated training seconds on this device, from the probe's images/s."""
        return {m.name: m.epochs * m.examples * m.passes / throughput[m.model] for m in self.models}

    def eta_s(self, throughput: dict[Model, float]) -> float:
        return sum(self.seconds(throughput).values())

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "profile": self.profile,
            "train_examples": self.train_examples,
            "clean_epoch_units": self.units,
            "models": [m.as_dict() for m in self.models],
        }


def train_size(name: str, n: int | None, held_out: int = 0) -> int:
    """The training examples a run uses: ``n`` or the dataset's full training split, less the
    ``held_out`` validation examples."""
    return (n if n is not None else IMAGE_SIZES[name][0]) - held_out


def shape_of(name: str) -> tuple:
    return IMAGE_SIZES[name][2]


def classes_of(name: str) -> int:
    return IMAGE_SIZES[name][3]


def plan_stage(stage: str, params: dict) -> StagePlan:
    """The plan of ``stage`` for its checked parameters (:func:`lib.params.checked_parameters`), from the
    stage's own ``plan(cfg)``."""
    return stages.get(stage).load().plan(build_config(config_class(stage), params))


def plans(profile: str | None, names: list[str] | None = None, params_file=PARAMS_FILE) -> list[StagePlan]:
    """The plans of the stages ``names`` (default: all) under ``profile`` (default: the parameters file's)."""
    return [plan_stage(name, checked_parameters(name, profile, params_file)) for name in names or stages.names()]


# --------------------------------------------------------------------------------------------------
# The throughput probe


def build(model: Model) -> torch.nn.Module:
    """The network ``model`` describes, on this machine's device."""
    import lib.models as M
    from lib.runtime import device

    options = dict(model.options)
    if model.arch == "tanh_cnn":
        options |= {"mean": 0.13, "std": 0.31}
    return M.build(model.arch, model.shape, model.classes, **options).to(device())


def probe(model: Model, batch_size: int, batches: int = 2) -> float:
    """Training images/s of ``model`` on this device: one warm-up batch, then ``batches`` timed ones
    (batch capped at 32 on a CPU, where images/s hardly depends on it)."""
    from lib.runtime import device, synchronize

    dev = device()
    net = build(model).train()
    b = batch_size if dev.type == "cuda" else min(batch_size, 32)
    x = torch.rand(b, *model.shape, device=dev)
    y = torch.randint(0, model.classes, (b,), device=dev)
    opt = torch.optim.Adam(net.parameters())
    for i in range(1 + batches):
        if i == 1:
            synchronize()
            t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    synchronize()
    return b * batches / (time.perf_counter() - t0)


def throughputs(stage_plans: list[StagePlan]) -> dict[Model, float]:
    """The probe's training images/s of every kind of model the plans train (each probed once)."""
    out: dict[Model, float] = {}
    for plan in stage_plans:
        for m in plan.models:
            if m.model not in out:
                out[m.model] = probe(m.model, m.batch_size)
    return out


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def jobs(stage_plans: list[StagePlan], seconds: dict[str, dict[str, float]]) -> list[Job]:
    """Every unit of the plans as a scheduler sees it (``seconds``: stage -> unit -> estimated seconds)."""
    return [
        Job(f"{p.stage}/{m.name}", seconds[p.stage][m.name], tuple(f"{p.stage}/{d}" for d in m.deps), m.exclusive)
        for p in stage_plans
        for m in p.models
    ]


def recorded_seconds(plan: StagePlan, results_root=None) -> dict[str, float]:
    """Each unit's training seconds as the committed run recorded them (``results/<stage>/training.json``), where
    it trained a model of that name; empty otherwise."""
    from lib.runtime import REPO_ROOT

    path = (results_root or REPO_ROOT / "results") / plan.stage / "training.json"
    if not path.exists():
        return {}
    trained = {m["name"]: m["seconds"] for m in json.loads(path.read_text()).get("models", [])}
    return {m.name: trained[m.name] for m in plan.models if m.name in trained}


def _print_makespan(stage_plans: list[StagePlan], seconds: dict, workers: list[int], source: str) -> list[dict]:
    rows = makespan(jobs(stage_plans, seconds), workers)
    print(f"\nmakespan ({source}): longest dependency chain vs total work / N")
    print(f"  {'workers':>7s} {'makespan':>10s} {'longest chain':>14s} {'work / N':>10s} {'efficiency':>10s}")
    total = rows[0]["work_over_n_s"] * rows[0]["workers"]
    for r in rows:
        eff = total / (r["workers"] * r["makespan_s"]) if r["makespan_s"] else 1.0
        print(
            f"  {r['workers']:7d} {_hours(r['makespan_s']):>10s} {_hours(r['critical_path_s']):>14s} "
            f"{_hours(r['work_over_n_s']):>10s} {100 * eff:9.0f}%"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", help="stages (default: all)")
    ap.add_argument("--profile", default=None, help="smoke | cpu | paper (default: params.yaml's)")
    ap.add_argument("--params", default=str(PARAMS_FILE))
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--no-probe", action="store_true", help="skip the throughput probe (no ETA)")
    ap.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=None,
        help="print the makespan for N workers (e.g. --workers 1 2 8 16): from the probe's estimates, and from the "
        "committed run's recorded training times where it has them",
    )
    args = ap.parse_args(argv)
    from lib.runtime import device_name

    try:
        stage_plans = plans(args.profile, args.stages, args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    require(not (args.workers and args.no_probe), "--workers needs the probe's estimates (drop --no-probe)")
    require(all(n >= 1 for n in args.workers or []), f"--workers must be >= 1, got {args.workers}")
    throughput = {} if args.no_probe else throughputs(stage_plans)
    out = {"device": device_name(), "stages": []}
    for plan in stage_plans:
        blob = plan.as_dict()
        if throughput:
            blob["eta_s"] = round(plan.eta_s(throughput), 1)
        out["stages"].append(blob)
    if args.workers:
        probed = {p.stage: p.seconds(throughput) for p in stage_plans}
        recorded = {p.stage: probed[p.stage] | recorded_seconds(p) for p in stage_plans}
        out["makespan"] = makespan(jobs(stage_plans, probed), args.workers)
        out["makespan_recorded"] = makespan(jobs(stage_plans, recorded), args.workers)
    out["clean_epoch_units"] = round(sum(p.units for p in stage_plans), 1)
    if throughput:
        out["throughput_images_per_s"] = {m.label(): round(v, 1) for m, v in throughput.items()}
        out["eta_s"] = round(sum(p.eta_s(throughput) for p in stage_plans), 1)
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print(f"device: {out['device']}")
    for plan, blob in zip(stage_plans, out["stages"]):
        eta = f", ETA {_hours(blob['eta_s'])}" if "eta_s" in blob else ""
        print(
            f"\n{plan.stage} ({plan.profile}): {len(plan.models)} models, {plan.units:g} clean-epoch units "
            f"(1 unit = one clean epoch over {plan.train_examples:,} examples){eta}"
        )
        for m in plan.models:
            print(
                f"  {m.name:52s} {m.model.label():44s} {m.epochs:4d} ep x {m.examples:7,d} ex x {m.passes:5.1f} passes = {m.units:9.2f}"
            )
    if throughput:
        print("\nthroughput (training images/s, probe):")
        for label, v in out["throughput_images_per_s"].items():
            print(f"  {label:50s} {v:10.1f}")
        print(f"\ntotal: {out['clean_epoch_units']:g} clean-epoch units, ETA {_hours(out['eta_s'])} on this device")
        if args.workers:
            _print_makespan(stage_plans, probed, args.workers, "the probe's estimates")
            n = sum(len(recorded_seconds(p)) for p in stage_plans)
            source = f"recorded training times of {n} of {sum(len(p.models) for p in stage_plans)} units, the probe's for the rest"
            _print_makespan(stage_plans, recorded, args.workers, source)
    else:
        print(f"\ntotal: {out['clean_epoch_units']:g} clean-epoch units")
    return 0


if __name__ == "__main__":
    sys.exit(main())
