"""``python -m lib.pipeline STAGE``: run one paper's notebook as a DVC stage.

params.yaml (profile + the stage's section) -> papermill injects the parameters into
``notebooks/STAGE.ipynb`` -> the notebook writes figures, tables and metrics into a temporary
folder -> the executed notebook (+ HTML) is saved beside them -> the folder replaces
``results/STAGE/`` in one rename. A failure leaves ``results/STAGE/`` exactly as it was.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from lib.errors import ConfigError, require
from lib.params import load_stage_params
from lib.runtime import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"
RESULTS = REPO_ROOT / "results"


def notebook_path(stage: str) -> Path:
    """The notebook behind ``stage``; clear error if there is none."""
    path = NOTEBOOKS / f"{stage}.ipynb"
    known = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
    require(path.exists(), f"unknown stage '{stage}'; notebooks: {', '.join(known)}")
    return path


def _to_html(ipynb: Path) -> None:
    import nbconvert
    import nbformat

    body, _ = nbconvert.HTMLExporter().from_notebook_node(nbformat.read(ipynb, as_version=4))
    ipynb.with_suffix(".html").write_text(body, encoding="utf-8")


def run_stage(stage: str, profile: str | None = None, results_root: Path = RESULTS) -> Path:
    """Execute ``stage``'s notebook with its parameters; returns ``results_root/stage``."""
    import papermill as pm

    source = notebook_path(stage)
    params = load_stage_params(stage, profile)
    final = Path(results_root) / stage
    tmp = Path(results_root) / f".{stage}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    params.update(results_dir=str(tmp), data_dir=str(REPO_ROOT / "data" / "prepared"))
    # kernels are started by name; make 'python' this interpreter (the project's environment)
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    try:
        pm.execute_notebook(
            str(source), str(tmp / f"{stage}.ipynb"), parameters=params, cwd=str(REPO_ROOT),
            kernel_name="python3", progress_bar=False, log_output=False,
        )
        _to_html(tmp / f"{stage}.ipynb")
    except pm.PapermillExecutionError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConfigError(f"notebook {source.name} failed: {err.ename}: {err.evalue}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = Path(results_root) / f".{stage}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stage")
    ap.add_argument("--profile", default=None, help="override params.yaml's profile (smoke | cpu | paper)")
    args = ap.parse_args(argv)
    try:
        out = run_stage(args.stage, args.profile)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{args.stage}: results in {out.relative_to(REPO_ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
