"""The DVC + papermill harness: stripped notebooks, params consistency, bad input, atomic results."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lib import stages
from lib.errors import ConfigError
from lib.params import (
    INJECTED,
    PROFILES,
    checked_parameters,
    conforms,
    declared_parameters,
    notebook_parameters,
    stage_config,
)
from lib.pipeline import run_stage
from lib.runtime import REPO_ROOT

NOTEBOOKS = sorted((REPO_ROOT / "notebooks").glob("*.ipynb"))
DVC = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())


def test_there_are_notebooks():
    assert NOTEBOOKS


def test_params_yaml_is_the_switch_and_empty_overrides():
    """Main runs the profiles as written; params.yaml stays small enough for `dvc exp show`."""
    assert PARAMS["profile"] in PROFILES and set(PARAMS) == {"profile", "data", *(p.stem for p in NOTEBOOKS)}
    assert all(PARAMS[stage] == {} for stage in PARAMS if stage != "profile")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_stored_stripped(path):
    nb = json.loads(path.read_text())
    dirty = [
        i
        for i, c in enumerate(nb["cells"])
        if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))
    ]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; strip them (executed copies belong in results/)"


def test_every_registered_stage_has_a_notebook_and_every_notebook_a_stage():
    assert [p.stem for p in NOTEBOOKS] == sorted(stages.names())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_parameters_cell_holds_only_what_the_pipeline_injects(path):
    """Names and types are declared once (the stage's Config): the notebook takes the profile, the checked
    settings and its folders; run by hand or by nbval it reads the smoke block of the stage's profiles."""
    cell = notebook_parameters(path)
    assert tuple(cell) == INJECTED
    assert cell["profile"].default == "smoke" and cell["settings"].default == {}
    for name, d in cell.items():
        assert conforms(d.default, d.annotation), f"{path.name}: default of {name} is not {d.annotation}"


@pytest.mark.parametrize("stage", stages.names())
def test_every_profile_meets_the_stages_declaration(stage):
    declared = declared_parameters(stage)
    for profile in PROFILES:  # exact: same keys, declared types, valid values
        params = checked_parameters(stage, profile)
        assert params.keys() - {"profile"} == declared.keys()
        stage_config(stage, profile)


@pytest.mark.parametrize("stage", stages.names())
def test_the_configs_defaults_are_the_paper_profiles_values(stage):
    """The Config's defaults are the paper's settings: equal to the paper profile, key by key (floats
    within 1%: the profile writes 2/255 as 0.0078)."""
    paper, declared = checked_parameters(stage, "paper"), declared_parameters(stage)
    differ = [k for k, d in declared.items() if not _close(d.default, paper[k])]
    assert not differ, f"{stage}: Config defaults differ from the paper profile in {differ}"


def _close(a: object, b: object) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-2)
    return a == b


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_dvc_stage_lists_only_its_own_params_and_its_outputs(path):
    stage = DVC[path.stem]
    names = [p for p in stage["params"] if isinstance(p, str)]
    files = [p for p in stage["params"] if isinstance(p, dict)]  # the profile file's blocks (DVC params)
    assert sorted(names) == sorted(["profile", path.stem])
    assert [list(f) for f in files] == [[f"profiles/{path.stem}.yaml"]]
    assert f"notebooks/{path.name}" in stage["deps"] and f"profiles/{path.stem}.yaml" not in stage["deps"]  # a param
    assert stage["cmd"] == f"python -m lib.pipeline {path.stem}"
    outs = [o for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]
    for out in outs:  # DVC deletes non-persistent outputs before a run; results must survive a failure
        ((name, flags),) = out.items()
        assert flags == {"cache": False, "persist": True}, name  # results: in git
    assert not [name for o in outs for name in o if name.startswith("models/")]  # the train stage's outputs
    assert f"models/{path.stem}" in stage["deps"]  # the notebook only loads what the train stage trained
    train = {name: flags for o in DVC["train"]["outs"] for name, flags in o.items()}
    assert train[f"models/{path.stem}"] == {"persist": True}  # DVC-cached (shared by push / pull), kept between runs


def test_unknown_profile_and_stage_fail_early_and_leave_results_untouched(tmp_path):
    with pytest.raises(ConfigError, match="unknown profile 'huge'"):
        run_stage(NOTEBOOKS[0].stem, "huge", results_root=tmp_path)
    with pytest.raises(ConfigError, match="unknown stage"):
        run_stage("p9_nothing", "smoke", results_root=tmp_path)
    assert list(tmp_path.iterdir()) == []


BAD_PARAMETERS = {  # stage -> (a wrong smoke parameter, the message it must produce)
    "p1_conv_generator_ensemble": ({"s": -0.2}, "s must be in"),
    "compare": ({"eps_linf": -0.1}, "eps_linf must be > 0"),
    "p2_pgn": ({"at_eps": [-0.5, 1.0]}, "at_eps, pgd_eps and attack_eps must be > 0"),
    "p3_single_step_reuse": ({"datasets": {"mnist5k": -0.3}}, "eps for mnist5k must be in"),
    "p4_resnet_transfer_augmentation": ({"eps": [-0.01]}, "eps must be non-empty and >= 0"),
    "p5_mnist_gan": ({"intensities": [-0.1]}, "intensities must be in"),
}


def test_every_stage_has_a_bad_parameter_case():
    assert set(BAD_PARAMETERS) == {p.stem for p in NOTEBOOKS}


@pytest.mark.parametrize("stage", sorted(BAD_PARAMETERS))
def test_bad_parameter_stops_before_the_kernel_and_leaves_previous_results(tmp_path, stage, monkeypatch):
    wrong, message = BAD_PARAMETERS[stage]
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    old = tmp_path / stage
    old.mkdir()
    (old / "metrics.json").write_text("{}")
    params = tmp_path / "params.yaml"
    params.write_text(
        yaml.safe_dump({**PARAMS, stage: wrong})
    )  # an override, as `dvc exp run -S +stage.key=...` writes
    shutil.copytree(REPO_ROOT / "profiles", tmp_path / "profiles")
    with pytest.raises(ConfigError, match=message):
        run_stage(stage, "smoke", results_root=tmp_path, params_file=params)
    assert {p.name for p in tmp_path.iterdir()} == {"params.yaml", "profiles", stage}
    assert [p.name for p in old.iterdir()] == ["metrics.json"]


def test_command_line_reports_one_clear_error_and_nonzero_exit():
    out = subprocess.run(
        [sys.executable, "-m", "lib.pipeline", "p3_single_step_reuse", "--profile", "nope"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == ["error: unknown profile 'nope'; choose one of smoke, cpu, paper"]


def test_lib_and_tests_are_ruff_clean():
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent))
    assert ruff, "ruff is part of the dev extra"
    out = subprocess.run([ruff, "check", "lib", "tests"], capture_output=True, text=True, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def test_two_kernels_started_at_once_in_one_folder_both_start(tmp_path, monkeypatch):
    """Two stages run at once in one checkout: each kernel gets IPC sockets of its own (jupyter's default,
    kernel-ipc-1..5 in the working folder, let the second kernel pick the first's and die at start)."""
    import asyncio

    from lib.pipeline import _kernel_manager_class

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""))
    manager = _kernel_manager_class()

    async def start() -> bool:
        km = manager(kernel_name="python3")
        await km.start_kernel()
        client = km.client()
        client.start_channels()
        try:
            await client.wait_for_ready(timeout=60)
            return True
        except RuntimeError:
            return False
        finally:
            client.stop_channels()
            await km.shutdown_kernel(now=True)

    async def both() -> list[bool]:
        return await asyncio.gather(start(), start())

    assert asyncio.run(both()) == [True, True]
    assert not list(tmp_path.glob("kernel-ipc*")), "sockets were made in the working folder"
