"""``python -m lib.gpucheck OUT [--seconds N]``: what one GPU session measures, in one command.

1. the device, torch and CUDA versions;
2. ``make bench``'s throughput part on the ``paper`` profile (every model at its batch size, the GPU path on
   and off, the speed-up);
3. the plan of the ``paper`` profile with this device's probe (models, clean-epoch units, ETA per stage);
4. p5's ``paper`` settings trained for at most ``--seconds`` (the models that finish, each with its wall time),
   on Fashion-MNIST's 60,000 images in place of MNIST's (same shape and size; the full MNIST has no offline
   source, and the GPU machine reaches no network).

Everything goes to ``OUT`` as JSON and CSV (the bench also writes its table under ``results/bench/``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch


class _OutOfTime(Exception):
    pass


def _device() -> dict:
    from lib.runtime import device_name

    return {"device": device_name(), "torch": torch.__version__, "cuda": torch.version.cuda}


def _stage(seconds: int, out: Path, data_dir: str) -> dict:
    """p5 under the paper profile (Fashion-MNIST in place of MNIST) until ``seconds`` run out."""
    from lib import cache
    from lib.params import stage_config
    from lib.runtime import Acceleration
    from lib.stages import p5_mnist_gan as p5

    Acceleration.configure("paper")
    cache.open_store(out / "models", False)
    cfg = stage_config("p5_mnist_gan", "paper", dataset="fashion_mnist")
    started = time.perf_counter()

    def stop(_signum, _frame):
        raise _OutOfTime

    signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    finished = True
    try:
        p5.run(cfg, data_dir)
    except _OutOfTime:
        finished = False
    finally:
        signal.alarm(0)
    return {
        "stage": "p5_mnist_gan",
        "profile": "paper",
        "dataset": "fashion_mnist (60,000 train / 10,000 test) in place of mnist",
        "finished": finished,
        "wall_time_s": round(time.perf_counter() - started, 1),
        "models": cache.runs(),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--seconds", type=int, default=300, help="the stage part's time limit (default 300)")
    ap.add_argument("--data", default="data/prepared")
    ap.add_argument("--parts", default="device,throughput,plan,stage")
    args = ap.parse_args(argv)
    os.environ.setdefault("LIB_PROGRESS", "0")
    args.out.mkdir(parents=True, exist_ok=True)
    parts = args.parts.split(",")
    report: dict = {"device": _device()}
    print(json.dumps(report["device"]), flush=True)
    if "throughput" in parts:
        from lib import bench

        t0 = time.perf_counter()
        table = bench.throughput("paper")
        table.to_csv(args.out / "throughput_paper.csv", index=False)
        report["throughput_s"] = round(time.perf_counter() - t0, 1)
        print(table.to_string(), flush=True)
    if "plan" in parts:
        from lib import plan

        t0 = time.perf_counter()
        stage_plans = plan.plans("paper")
        rates = plan.throughputs(stage_plans)
        report["plan"] = {
            p.stage: {"models": len(p.models), "units": p.units, "eta_s": round(p.eta_s(rates))} for p in stage_plans
        }
        report["plan_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(report["plan"]), flush=True)
    if "stage" in parts:
        report["stage"] = _stage(args.seconds, args.out, args.data)
        print(json.dumps(report["stage"]), flush=True)
    (args.out / "gpucheck.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
