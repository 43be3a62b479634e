"""``python -m lib.plan [--profile P] [STAGE ...] [--json]``: what each stage will train, and its cost.

Per stage, every model it trains (the name it has in the model store, epochs, training examples,
forward-backward passes per example), its cost in **clean-epoch units** (one unit = one clean
epoch of that model over the stage's training set: epochs x examples / training-set size x
passes), and an ETA on this machine's device from a throughput probe (a few timed training
batches of every kind of model; ``--no-probe`` skips it).

The lists mirror the stages' protocols (``lib/methods``, ``lib/compare.py``); the dry run
(``lib.pipeline --dry-run``) trains exactly the models listed, which the tests check. Epochs are
the configured maximum (p4 stops early). Passes count the classifier's gradient passes: an attack
of s steps adds s; a generator's own step is counted as one pass of the classifier.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from lib import dryrun
from lib.errors import ConfigError
from lib.params import PARAMS_FILE, check_parameters, declared_parameters, notebook_path

IMAGE_SIZES = dryrun.SIZES  # train, test, shape, classes of every dataset at its real size


@dataclass(frozen=True)
class Model:
    """A network architecture as the probe builds it."""

    arch: str
    shape: tuple
    classes: int
    options: tuple = ()  # (name, value) pairs

    def label(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options)
        return f"{self.arch}({opts}) {'x'.join(map(str, self.shape))}"


@dataclass
class Planned:
    """One training run of a stage."""

    name: str
    model: Model
    epochs: int
    examples: int
    passes: float
    batch_size: int
    units: float = 0.0  # clean-epoch units, set by the stage plan


@dataclass
class StagePlan:
    stage: str
    profile: str
    train_examples: int  # the stage's training set, the unit's denominator
    models: list[Planned] = field(default_factory=list)

    def add(self, name: str, model: Model, epochs: int, examples: int, passes: float, batch_size: int) -> None:
        self.models.append(
            Planned(
                name,
                model,
                epochs,
                examples,
                passes,
                batch_size,
                round(epochs * examples / self.train_examples * passes, 2),
            )
        )

    @property
    def units(self) -> float:
        return round(sum(m.units for m in self.models), 1)

    def eta_s(self, throughput: dict[Model, float]) -> float:
        return sum(m.epochs * m.examples * m.passes / throughput[m.model] for m in self.models)

    def as_dict(self) -> dict:
        return {
            "stage": self.stage,
            "profile": self.profile,
            "train_examples": self.train_examples,
            "clean_epoch_units": self.units,
            "models": [{**asdict(m), "model": m.model.label()} for m in self.models],
        }


def train_size(name: str, n: int | None, held_out: int = 0) -> int:
    """The training examples a run uses: ``n`` or the dataset's full training split, less the
    ``held_out`` validation examples."""
    return (n if n is not None else IMAGE_SIZES[name][0]) - held_out


def _shape(name: str) -> tuple:
    return IMAGE_SIZES[name][2]


def _classes(name: str) -> int:
    return IMAGE_SIZES[name][3]


def plan_p3(p: dict) -> StagePlan:
    names = list(p["datasets"])
    n = train_size(names[0], p["n_train"], p["n_val"])
    plan = StagePlan("p3_single_step_reuse", p["profile"], n)
    both = 1 + (p["clean_weight"] > 0)  # adversarial (+ clean) forward-backward
    passes = {
        "vanilla": 1,
        "fgsm_adv": 1 + both,
        "atda": 1 + both,
        "proposed": 1 + both,
        "bim10_adv": 10 + both,
        "bim30_adv": 30 + both,
    }
    for name in names:
        model = Model(
            "mnist_cnn", _shape(name), _classes(name), (("width", p["model_width"]), ("hidden", p["model_hidden"]))
        )
        for d in p["defences"]:
            plan.add(
                f"{name} {d}",
                model,
                p["epochs"],
                train_size(name, p["n_train"], p["n_val"]),
                passes[d],
                p["batch_size"],
            )
    return plan


def plan_p5(p: dict) -> StagePlan:
    name = p["dataset"]
    n = train_size(name, p["n_train"], p["n_val"])
    plan = StagePlan("p5_mnist_gan", p["profile"], n)
    model = Model("tanh_cnn", _shape(name), _classes(name))
    plan.add("phase 1: D", model, p["d_epochs"], n, 1, p["d_batch_size"])
    for i in p["intensities"]:
        plan.add(f"phase 2: G at intensity {i:g}", model, p["g_epochs"], n, 1, p["batch_size"])
    if (
        p.get("diagnosis") and 0.3 in p["intensities"]
    ):  # the headline's diagnosis: one G with the reference's clamped output
        plan.add(
            "diagnosis: G with clamped tanh (eps 0)", model, p["g_epochs"], n, 1, p["batch_size"]
        )  # eps: pixel units, from the data
    both = 1 + (p["clean_weight"] > 0)
    for _ in p["alternating_intensities"]:
        plan.add(
            "phase 3: D and G alternately, eps 0", model, p["alt_epochs"], n, 1 + both, p["batch_size"]
        )  # eps: pixel units, from the data
    return plan


def plan_p1(p: dict) -> StagePlan:
    name = p["dataset"]
    n = train_size(name, p["n_train"], p["n_val"])
    plan = StagePlan("p1_conv_generator_ensemble", p["profile"], n)
    model = Model(p["model"], _shape(name), _classes(name))
    both = 1 + (p["clean_weight"] > 0)
    plan.add("base (clean pre-training)", model, p["base_epochs"], n, 1, p["batch_size"])
    plan.add("black-box surrogate (independent clean model)", model, p["base_epochs"], n, 1, p["batch_size"])
    plan.add(
        "fine-tune proposed", model, p["epochs"], n, 1 + both, p["batch_size"]
    )  # generators' ascent + the classifier
    plan.add("fine-tune min-max", model, p["epochs"], n, p["minmax_steps"] + both, p["batch_size"])
    timed = 4 * (1 + p["timing_batches"]) * p["batch_size"]  # four methods: a warm-up batch + the timed batches
    plan.add(
        "table 1 timing runs",
        model,
        1,
        timed,
        (1 + 2 * (1 + both) + p["timing_minmax_steps"] + both) / 4,
        p["batch_size"],
    )
    return plan


def plan_p2(p: dict) -> StagePlan:
    names = list(p["datasets"])
    plan = StagePlan("p2_pgn", p["profile"], train_size(names[0], p["n_train"], p["n_val"]))
    both = 1 + (p["clean_weight"] > 0)
    pgn = 1 + 1 + both  # gradient image, the generator's ascent, the classifier
    for name in names:
        n, width, epochs = train_size(name, p["n_train"], p["n_val"]), p["width"], p["epochs"]
        runs = [("Baseline (clean)", 1, width, epochs), ("independent network (black-box source)", 1, width, epochs)]
        runs += [(f"FGM-AT eps {eps:g}", 1 + both, width, epochs) for eps in p["at_eps"]]
        runs += [(f"PGD-AT eps {eps:g}", p["pgd_train_steps"] + both, width, epochs) for eps in p["pgd_eps"]]
        runs += [(f"PGN c_L {c_l:g}", pgn, width, epochs) for c_l in p["c_l"]]
        runs += [
            (f"PGN ablation: no {drop}", pgn, width, epochs) for drop in ("label", "image", "gradient") if p["ablation"]
        ]
        runs += [(f"PGN width x{m:g}", pgn, width * m, epochs) for m in p["capacity"]]
        if p.get(
            "reference_check"
        ):  # the matched pair retrained with the reference code's choices (eps / c_L chosen at run time)
            runs += [("FGM-AT (reference: augment)", 1 + both, width, epochs)]
            runs += [(f"PGN (reference: {tag})", pgn, width, epochs) for tag in ("augment", "leaky", "augment leaky")]
        for desc, passes, w, e in runs:
            plan.add(
                f"{name} {desc}",
                Model("convpool_cnn", _shape(name), _classes(name), (("width", w),)),
                e,
                n,
                passes,
                p["batch_size"],
            )
        for _kind in ("FGM-AT", "PGD-AT"):  # Fig. 3: PGN attackers against two fixed classifiers (G alone learns)
            for c_l in p["attack_c_l"]:
                plan.add(
                    f"PGN attacker c_L {c_l:g}",
                    Model("convpool_cnn", _shape(name), _classes(name), (("width", width),)),
                    p["attack_epochs"],
                    n,
                    2,
                    p["batch_size"],
                )
    return plan


def plan_p4(p: dict) -> StagePlan:
    names = list(p["datasets"])

    def sizes(name: str) -> tuple[int, int]:
        n_train, n_test = IMAGE_SIZES[name][:2]
        pooled = min(n_train + n_test, p["limit"] or n_train + n_test)
        train = round(pooled * p["fractions"][0])
        return train, train * (1 + len(p["eps"]))  # clean, and clean + the FGSM sets (before balancing)

    plan = StagePlan("p4_resnet_transfer_augmentation", p["profile"], sizes(names[0])[0])
    for name in names:
        clean, augmented = sizes(name)
        for variant, n in (("before", clean), ("aug-only", clean), ("proposed", augmented)):
            for arch in p["archs"]:
                model = Model(arch, _shape(name), _classes(name), (("small_input_stem", p["small_input_stem"]),))
                plan.add(f"{name} {arch} {variant}", model, p["max_epochs"], n, 1, p["batch_size"])
    return plan


def plan_compare(p: dict) -> StagePlan:
    from lib.compare import DEFENCES

    name = p["dataset"]
    n = train_size(name, p["n_train"], p["n_val"])
    plan = StagePlan("compare", p["profile"], n)
    model = Model(p["model"], _shape(name), _classes(name), tuple(sorted(p["model_options"].items())))
    both = {d: 1 + (w > 0) for d, w in p["clean_weight"].items()}
    passes = {
        "clean": 1,
        "fgsm_at": 2,
        "pgd_at": 11,
        "p1_generator_ensemble": 3,
        "p2_pgn": 3,
        "p3_single_step_reuse": 2,
        "p4_transfer_augmentation": 1,
        "p5_alternating_gan": 2,
    }
    seed = p["seed"]
    for defence, values in p["strengths"].items():
        for v in values:
            label = DEFENCES[defence][0]
            examples = n * (2 if defence == "p4_transfer_augmentation" else 1)  # clean + one FGSM set
            plan.add(
                f"{label} {'' if v is None else f'{v:.4g}'} seed {seed}",
                model,
                p["epochs"],
                examples,
                passes[defence] - 1 + both.get(defence, 1),
                p["batch_size"],
            )
    plan.add(f"{DEFENCES['clean'][0]}  seed {seed + 100}", model, p["epochs"], n, 1, p["batch_size"])
    return plan


PLANS = {
    "p1_conv_generator_ensemble": plan_p1,
    "p2_pgn": plan_p2,
    "p3_single_step_reuse": plan_p3,
    "p4_resnet_transfer_augmentation": plan_p4,
    "p5_mnist_gan": plan_p5,
    "compare": plan_compare,
}


def plan_stage(stage: str, params: dict) -> StagePlan:
    """The plan of ``stage`` for its checked parameters (``lib.params.check_parameters``)."""
    return PLANS[stage](params)


def plans(profile: str | None, stages: list[str] | None = None, params_file=PARAMS_FILE) -> list[StagePlan]:
    """The plans of ``stages`` (default: all) under ``profile`` (default: the parameters file's)."""
    out = []
    for stage in stages or list(PLANS):
        if stage not in PLANS:
            raise ConfigError(f"no plan for stage '{stage}'; stages: {', '.join(PLANS)}")
        source = notebook_path(stage)
        out.append(
            plan_stage(
                stage,
                check_parameters(stage, profile, declared_parameters(source), f"notebooks/{source.name}", params_file),
            )
        )
    return out


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


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stages", nargs="*", help="stages (default: all)")
    ap.add_argument("--profile", default=None, help="smoke | cpu | paper (default: params.yaml's)")
    ap.add_argument("--params", default=str(PARAMS_FILE))
    ap.add_argument("--json", action="store_true", help="print the plan as JSON")
    ap.add_argument("--no-probe", action="store_true", help="skip the throughput probe (no ETA)")
    args = ap.parse_args(argv)
    from lib.runtime import device_name

    try:
        stage_plans = plans(args.profile, args.stages, args.params)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    throughput = {}
    if not args.no_probe:
        for plan in stage_plans:
            for m in plan.models:
                if m.model not in throughput:
                    throughput[m.model] = probe(m.model, m.batch_size)
    out = {"device": device_name(), "stages": []}
    for plan in stage_plans:
        blob = plan.as_dict()
        if throughput:
            blob["eta_s"] = round(plan.eta_s(throughput), 1)
        out["stages"].append(blob)
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
    else:
        print(f"\ntotal: {out['clean_epoch_units']:g} clean-epoch units")
    return 0


if __name__ == "__main__":
    sys.exit(main())
