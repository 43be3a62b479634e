"""``python -m lib.pipeline STAGE``: run one paper's notebook as a DVC stage.

params.yaml (profile + the stage's overrides) and profiles/<stage>.yaml, checked against the stage's
``Config`` (``lib/stages/STAGE.py``: names and types) and by its ``validate()`` (no kernel starts for a bad
value) -> the stage's lock (one run per stage at a time: a second one stops at once, naming the first) and
a check that every folder the run writes is writable -> papermill injects the profile, the checked
parameters (``settings``) and the run's folders into ``notebooks/STAGE.ipynb``
-> the notebook writes figures, tables and metrics into a temporary folder of its own -> the
executed notebook (+ HTML) is saved beside them, the run's provenance is added to ``details.json``
-> the folder, checked complete, replaces ``results/STAGE/`` in one rename. A failure, a full
disk, a missing permission, SIGINT or SIGTERM leaves ``results/STAGE/`` exactly as it was, no
temporary folder behind, and one ``error:`` line.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lib.errors import (
    ConfigError,
    environment_error,
    environment_error_in,
    environment_message,
    existing_ancestor,
    require,
)
from lib.params import (
    PARAMS_FILE,
    build_config,
    check_seed,
    checked_parameters,
    config_class,
    notebook_path,
    params_hash,
)
from lib.runtime import QUIET, REPO_ROOT, DryRun, git_state, repo_relative, versions
from lib.stagelock import stage_lock, stale_note

RESULTS = REPO_ROOT / "results"
PREPARED = REPO_ROOT / "data" / "prepared"
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# What a finished run leaves in results/<stage>/ (dvc.yaml's outputs of the stage; a test keeps them equal)
OUTPUTS = (
    "{stage}.ipynb",
    "{stage}.html",
    "tables",
    "figures",
    "claims.md",
    "details.json",
    "training.json",
    "metrics.json",
)


class StageInterrupted(KeyboardInterrupt):
    """The stage was stopped by SIGINT or SIGTERM (a BaseException, so nothing swallows it)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def check_config(stage: str, params: dict) -> None:
    """Validate ``params`` with the stage's own ``Config.validate()`` before any kernel starts (the
    notebook builds the same ``Config`` again; checks that need the data, such as sizes, run only there)."""
    if "seed" in params:
        check_seed(params["seed"])
    build_config(config_class(stage), params)


def _kernel_manager_class():
    """Kernels over local IPC sockets, not plain-text TCP (and without the kernel's warning about it)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(transport="ipc", **kwargs)
            # sockets of this run's own: by default they are kernel-ipc-1..5 in the working directory, and two
            # stages started at once in one checkout picked the same ones (the second kernel died at start)
            self.ip = str(Path(tempfile.gettempdir()) / f"lib-kernel-{uuid.uuid4().hex[:12]}-ipc")

    return IPCKernelManager


class _DropParameterGuess(logging.Filter):
    """papermill guesses declared parameters with a regex that misses ``int | None``; our check
    (:func:`lib.params.checked_parameters`) is exact, so its 'unknown parameter' guesses are noise."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Passed unknown parameter")


_PARAMETER_GUESS = _DropParameterGuess()


def _finish_notebook(ipynb: Path, source: Path, final: Path) -> None:
    """Record repository-relative paths in papermill's metadata (the final place, not the
    temporary one, and no machine path), then render the HTML beside the notebook. The HTML
    leaves out the code of the parameter cells (the smoke defaults and papermill's injected values:
    the "Effective configuration" table further down shows what this run used) and of the setup cell,
    so the title, the paper and the verdicts open the page."""
    import nbconvert
    import nbformat
    from nbconvert.preprocessors import TagRemovePreprocessor

    nb = nbformat.read(ipynb, as_version=4)
    nb.metadata.papermill.update(input_path=repo_relative(source), output_path=repo_relative(final / ipynb.name))
    nbformat.write(nb, ipynb)
    exporter = nbconvert.HTMLExporter()
    hidden = {"parameters", "injected-parameters", "remove_input"}  # defaults, injected values, setup code
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags=hidden), enabled=True)
    body, _ = exporter.from_notebook_node(nb)
    ipynb.with_suffix(".html").write_text(body, encoding="utf-8")


def _write_json(path: Path, blob: dict) -> None:
    """Replace ``path`` with ``blob`` in one rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(blob, indent=2) + "\n")
    tmp.replace(path)


def _add_provenance(folder: Path, provenance: dict) -> None:
    """Put the run's provenance into the metadata block of the ``details.json`` it wrote."""
    path = folder / "details.json"
    require(path.exists(), f"the notebook wrote no details.json into {repo_relative(folder)}")
    blob = json.loads(path.read_text())
    _write_json(path, {**blob, "meta": {**blob.get("meta", {}), "provenance": provenance}})


def _add_training(folder: Path, plan: dict, seconds: float) -> None:
    """Complete ``training.json`` (the models the notebook trained or loaded) with the stage's
    plan (:mod:`lib.plan`) and the run's wall time."""
    path = folder / "training.json"
    blob = json.loads(path.read_text()) if path.exists() else {"models": []}
    trained_s = sum(m["seconds"] for m in blob["models"] if not m["loaded"])
    threads = training_threads(plan["profile"])  # every unit trained with these torch threads, wherever it was trained
    blob = {"wall_time_s": round(seconds, 1), "training_s": round(trained_s, 1), "threads_per_unit": threads, **blob}
    _write_json(path, {**blob, "plan": plan})


def training_threads(profile: str) -> int | None:
    from lib.train_units import training_threads

    return training_threads(profile)


def stage_plan(stage: str, params: dict) -> dict:
    from lib.plan import plan_stage

    return plan_stage(stage, params).as_dict()


def provenance(params: dict) -> dict:
    """Commit, dirty tree and its changed files, parameter hash and tool versions of a run."""
    return {**git_state(), "params_sha256": params_hash(params), "versions": versions()}


def _stop_kernels() -> None:
    """Kill this process's children, i.e. the kernel papermill started (it would write on)."""
    import psutil

    children = psutil.Process().children(recursive=True)
    for child in children:
        child.kill()
    psutil.wait_procs(children, timeout=10)


@contextmanager
def _stoppable() -> Iterator[None]:
    """Turn SIGINT and SIGTERM into :class:`StageInterrupted` for the duration of a run."""

    def stop(signum, _frame):
        _stop_kernels()  # first: a kernel outliving its client would write on, and complain
        raise StageInterrupted(signum)

    try:
        previous = {s: signal.signal(s, stop) for s in STOP_SIGNALS}
    except ValueError:  # not the main thread: leave signal handling to the caller
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM back while results are swapped, so the swap is never half done."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def _old(final: Path) -> Path:
    return final.with_name(f".{final.name}.old")


def _temporaries(results_root: Path, stage: str) -> list[Path]:
    """The temporary folders of this stage's runs (each run has its own: ``.<stage>.<pid>.tmp``)."""
    return sorted(Path(results_root).glob(f".{stage}.*.tmp"))


def _recover(final: Path) -> str | None:
    """Undo what a run killed mid-way left (called under the stage's lock, so no run of the stage is
    using it): its temporary folder is removed; a ``.<stage>.old`` beside complete results is
    removed, and one without them (killed between the swap's two renames) is put back. Returns
    a line saying what was done, or None."""
    for leftover in _temporaries(final.parent, final.name):
        shutil.rmtree(leftover)
    old = _old(final)
    if not old.exists():
        return None
    if final.exists():
        shutil.rmtree(old)
        return f"note: removed {repo_relative(old)}, left by an earlier run that stopped after installing its results"
    old.rename(final)
    return f"note: restored {repo_relative(final)} from {repo_relative(old)}, left by an earlier run stopped mid-swap"


def check_writable(roots: dict[str, Path], final: Path) -> None:
    """Every folder the run writes or replaces is writable: each root (or, if it does not exist
    yet, the folder that will hold it), and every folder of the results it replaces (removing
    them needs it). One :class:`ConfigError` naming the first that is not."""
    folders = [existing_ancestor(root) for root in roots.values()]
    if final.exists():
        folders += [final, *(p for p in sorted(final.rglob("*")) if p.is_dir())]
    for folder in folders:
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ConfigError(environment_message(errno.EACCES, folder, roots))


def _check_complete(tmp: Path, stage: str) -> None:
    """The folder about to be installed holds every output of the stage."""
    missing = [name.format(stage=stage) for name in OUTPUTS if not (tmp / name.format(stage=stage)).exists()]
    require(
        not missing,
        f"the run of {stage} did not write {', '.join(missing)}; {repo_relative(tmp.parent / stage)} left as it was",
    )


def _replace(final: Path, tmp: Path) -> None:
    """Install ``tmp`` as ``final`` in one rename (the old results are moved aside first and
    removed after; never half done)."""
    old = _old(final)
    with _signals_held():
        if final.exists():
            final.rename(old)
        try:
            tmp.rename(final)
        except BaseException:
            if old.exists():
                old.rename(final)
            raise
        if old.exists():
            shutil.rmtree(old)


def _rebuilt(folder: Path) -> list[str]:
    """One line per store entry the run found damaged and rebuilt (from its ``training.json``)."""
    path = folder / "training.json"
    blob = json.loads(path.read_text()) if path.exists() else {}
    return [f"note: {entry['path']} {entry['why']}; rebuilt" for entry in blob.get("rebuilt", [])]


def run_stage(
    stage: str,
    profile: str | None = None,
    results_root: Path = RESULTS,
    params_file: Path = PARAMS_FILE,
    data_dir: Path = PREPARED,
    models_root: Path | None = None,
    dry_run: bool = False,
    batch_size: int | None = None,
    examples: int | None = None,
) -> Path:
    """Execute ``stage``'s notebook with its checked parameters; returns ``results_root/stage``.

    Trained models are stored in (and loaded from) ``models_root/stage``, by default the
    ``models`` folder beside ``results_root`` (so ``models/``); each is written whole the moment
    it is trained, so a stopped run resumes from the models it finished.
    ``dry_run`` (see :mod:`lib.dryrun`): synthetic data of the real sizes, every loop cut short
    (every batch size set to ``batch_size`` and every evaluation set cut to ``examples`` when
    given), into ``build/dry-run/`` whatever the roots say.
    """
    models_root = Path(results_root).parent / "models" if models_root is None else models_root
    source = notebook_path(stage)
    params = checked_parameters(stage, profile, params_file)
    check_config(stage, params)
    require(
        (batch_size is None and examples is None) or dry_run,
        "--batch-size and --examples are for the dry run only (set sizes in profiles/<stage>.yaml)",
    )
    require(examples is None or examples >= 1, f"--examples must be >= 1, got {examples}")
    require(batch_size is None or batch_size >= 1, f"--batch-size must be >= 1, got {batch_size}")
    if dry_run:
        from lib import dryrun

        results_root, models_root = dryrun.ROOT / "results", dryrun.ROOT / "models"
    roots = {"--results": Path(results_root), "--models": Path(models_root)}
    final = Path(results_root) / stage
    check_writable(roots, final)
    with stage_lock(results_root, stage) as stale:
        for line in (stale_note(stage, stale), _recover(final)):
            if line:
                print(line, flush=True)
        return _execute(stage, source, params, final, Path(models_root), Path(data_dir), dry_run, batch_size, examples)


def _dry_run_setup(stage: str, params: dict, models_root: Path, batch_size: int | None, examples: int | None) -> Path:
    """Point ``params`` at the dry run (its cuts and synthetic data); returns the data folder."""
    from lib import dryrun

    for stored in (models_root / stage, models_root / ".evaluations" / stage):  # a dry run computes everything
        shutil.rmtree(stored, ignore_errors=True)
    data_dir = Path(dryrun.prepare(dryrun.datasets_of(params)))
    os.environ[DryRun.EXAMPLES] = str(examples or 64)  # read by the kernel's DryRun.configure
    DryRun.configure(True)
    changed = dryrun.overrides(params, batch_size)
    DryRun.configure(False)
    print(
        f"{stage}: dry run ({params['profile']} profile) on synthetic data; {dryrun.cuts()}; changed: "
        + ", ".join(f"{k}={v}" for k, v in changed.items()),
        flush=True,
    )
    params.update(changed)
    return data_dir


def _run_notebook(source: Path, out: Path, injected: dict, roots: dict[str, Path]) -> None:
    """Execute ``source`` into ``out`` with the ``injected`` parameters; a failing cell is one ConfigError."""
    import papermill as pm

    logging.getLogger("papermill").addFilter(_PARAMETER_GUESS)
    try:
        pm.execute_notebook(
            str(source),
            str(out),
            parameters=injected,
            cwd=str(REPO_ROOT),
            kernel_name="python3",
            progress_bar=False,
            log_output=False,
            kernel_manager_class=_kernel_manager_class(),
            extra_arguments=["--IPKernelApp.log_level=CRITICAL"],  # the kernel's own log (transport, shutdown);
            # what the notebook prints or warns is kept in the notebook's outputs
        )
    except pm.PapermillExecutionError as err:
        raise environment_error_in(f"{err.evalue}", roots) or ConfigError(
            f"notebook {source.name} failed: {err.ename}: {err.evalue}"
        ) from None


def _execute(
    stage: str,
    source: Path,
    params: dict,
    final: Path,
    models_root: Path,
    data_dir: Path,
    dry_run: bool,
    batch_size: int | None,
    examples: int | None,
) -> Path:
    """Run the notebook into a temporary folder of this run and install it as ``final`` (the
    caller holds the stage's lock)."""
    planned = dict(params)  # the plan is of the profile's own settings, dry run or not
    if dry_run:
        data_dir = _dry_run_setup(stage, params, models_root, batch_size, examples)
    run_provenance = provenance(params)
    tmp = final.with_name(f".{stage}.{os.getpid()}.tmp")
    injected = {  # the notebook's parameters cell (lib.params.INJECTED)
        "profile": params["profile"],
        "settings": {k: v for k, v in params.items() if k != "profile"},
        "results_dir": repo_relative(tmp),
        "data_dir": repo_relative(data_dir),
        "models_dir": repo_relative(models_root / stage),
        "dry_run": dry_run,
    }
    started = time.perf_counter()
    # kernels are started by name; make 'python' this interpreter (the project's environment)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    os.environ[QUIET] = "0"  # no progress bars in the executed notebook: one line per model instead
    try:
        tmp.mkdir()
        with _stoppable():
            _run_notebook(
                source, tmp / f"{stage}.ipynb", injected, {"--results": final.parent, "--models": models_root}
            )
            _finish_notebook(tmp / f"{stage}.ipynb", source, final)
            _add_provenance(tmp, run_provenance)
            _add_training(
                tmp, stage_plan(stage, planned), time.perf_counter() - started
            )  # after the notebook checked the values
            _check_complete(tmp, stage)
            _replace(final, tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for line in _rebuilt(final):
        print(line, flush=True)
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage")
    ap.add_argument("--profile", default=None, help="override params.yaml's profile (smoke | cpu | paper)")
    ap.add_argument("--params", type=Path, default=PARAMS_FILE, help="parameters file (default: params.yaml)")
    ap.add_argument("--results", type=Path, default=RESULTS, help="results root (default: results/)")
    ap.add_argument("--data", type=Path, default=PREPARED, help="prepared data folder (default: data/prepared)")
    ap.add_argument(
        "--models", type=Path, default=None, help="model store root (default: models/ beside the results root)"
    )
    ap.add_argument(
        "--dry-run",
        action="store_true",
        help="synthetic data of the real sizes, every loop cut short, into build/dry-run/",
    )
    ap.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="dry run only: every batch size (a CPU-sized check of a GPU profile)",
    )
    ap.add_argument("--examples", type=int, default=None, help="dry run only: examples per evaluation set (default 64)")
    args = ap.parse_args(argv)
    models = args.models if args.models is not None else args.results.parent / "models"
    roots = {"--results": args.results, "--models": models}  # what a run writes
    try:
        try:
            out = run_stage(
                args.stage,
                args.profile,
                args.results,
                args.params,
                args.data,
                args.models,
                args.dry_run,
                args.batch_size,
                args.examples,
            )
        except OSError as err:
            mapped = environment_error(err, roots)
            if mapped is None:
                raise
            raise mapped from None
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StageInterrupted as stop:
        print(
            f"error: {args.stage} stopped by {stop}; {repo_relative(args.results / args.stage)} left as it was",
            file=sys.stderr,
        )
        return 128 + stop.signum
    print(f"{args.stage}: results in {repo_relative(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
