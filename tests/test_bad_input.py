"""Bad input stops early: one clear message, a non-zero exit, ``results/`` byte-for-byte unchanged.

Each case runs ``python -m lib.pipeline`` (its ``main``) against a copy of the committed results
of the stage, a parameters file with one thing wrong, and a scratch data folder.
"""

from __future__ import annotations

import copy
import hashlib
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import lib.data as D
from lib import checkpoint
from lib import pipeline as P
from lib.errors import ConfigError
from lib.runtime import REPO_ROOT

PARAMS = yaml.safe_load((REPO_ROOT / "params.yaml").read_text())
PROFILES = {f.stem: yaml.safe_load(f.read_text()) for f in (REPO_ROOT / "profiles").glob("*.yaml")}


def _digest(root: Path) -> dict[str, str]:
    """Every file and folder under ``root`` (hidden ones too) with its content hash; the stages' lock
    files (``.<stage>.lock``, empty, kept between runs) aside."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(root.rglob("*"))
        if not (p.parent == root and p.name.endswith(".lock"))
    }


class Workspace:
    """A results root holding a copy of one stage's committed results, a params file, a data folder."""

    def __init__(self, root: Path, stage: str):
        self.stage, self.results, self.data = stage, root / "results", root / "data"
        self.data.mkdir()
        committed = REPO_ROOT / "results" / stage
        if committed.exists():
            shutil.copytree(committed, self.results / stage)
        else:  # a stage that has not run yet: any previous results will do
            (self.results / stage).mkdir(parents=True)
            (self.results / stage / "metrics.json").write_text("{}\n")
        self.params = root / "params.yaml"
        self.before = _digest(self.results)

    def write_params(self, change) -> None:
        """params.yaml (profile smoke, no overrides) and profiles/, after ``change(params, profiles)``."""
        params, profiles = {**copy.deepcopy(PARAMS), "profile": "smoke"}, copy.deepcopy(PROFILES)
        change(params, profiles)
        self.params.write_text(yaml.safe_dump(params, sort_keys=False))
        write_profiles(self.params.parent, profiles)

    def argv(self, stage: str | None = None) -> list[str]:
        return [
            stage or self.stage,
            "--params",
            str(self.params),
            "--results",
            str(self.results),
            "--data",
            str(self.data),
        ]

    def assert_stopped_cleanly(self, code: int, stderr: str, *fragments: str, expected_code: int = 2) -> None:
        lines = stderr.strip().splitlines()
        assert code == expected_code, stderr
        assert len(lines) == 1 and lines[0].startswith("error: "), f"want one error line, got:\n{stderr}"
        for fragment in fragments:
            assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
        assert _digest(self.results) == self.before, "results changed or a temporary folder was left"


def write_profiles(root: Path, profiles: dict) -> None:
    (root / "profiles").mkdir(exist_ok=True)
    for stage, blocks in profiles.items():
        (root / "profiles" / f"{stage}.yaml").write_text(yaml.safe_dump(blocks, sort_keys=False))


def _override(stage: str, **changes):
    """Values set in params.yaml's section of ``stage`` (what ``dvc exp run -S +stage.key=value`` writes)."""

    def change(params, profiles):
        params[stage] = {**(params.get(stage) or {}), **changes}

    return change


def _rename(stage: str, old: str, new: str):
    def change(params, profiles):
        block = profiles[stage]["smoke"]
        block[new] = block.pop(old)

    return change


def _drop(*path: str):
    """Remove a stage's profiles (one name) or a block or key of them."""

    def change(params, profiles):
        node = profiles
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return change


def _unchanged(params, profiles) -> None:
    pass


P5, P3, COMPARE = "p5_mnist_gan", "p3_single_step_reuse", "compare"

# id -> (stage, change to params.yaml, fragments of the one error line)
BEFORE_THE_KERNEL = {
    "mistyped key": (
        P5,
        _rename(P5, "g_epochs", "g_epoch"),
        [
            "unknown key p5_mnist_gan.smoke.g_epoch in",
            "profiles/p5_mnist_gan.yaml (is not a parameter; did you mean g_epochs?)",
            "missing key g_epochs",
        ],
    ),
    "extra key": (
        P3,
        _override(P3, learning_rate_decay=0.1),
        ["unknown key p3_single_step_reuse.learning_rate_decay in", "params.yaml (is not a parameter)"],
    ),
    "key the pipeline sets": (
        P3,
        _override(P3, results_dir="elsewhere"),
        ["unknown key p3_single_step_reuse.results_dir in", "params.yaml (is set by the pipeline"],
    ),
    "missing key": (
        P3,
        _drop(P3, "smoke", "epochs"),
        ["missing key epochs (set it in the common or smoke block of", "profiles/p3_single_step_reuse.yaml)"],
    ),
    "string for a number": (
        P3,
        _override(P3, lr="1e-3"),
        ["p3_single_step_reuse.lr must be float, got '1e-3' (str)", "write 1.0e-3"],
    ),
    "list for a scalar": (
        P5,
        _override(P5, g_lr=[0.1, 0.01]),
        ["p5_mnist_gan.g_lr must be float, got [0.1, 0.01] (list)"],
    ),
    "NaN size": (P5, _override(P5, n_train=float("nan")), ["p5_mnist_gan.n_train must be int | None, got nan (float)"]),
    "non-integer size": (P5, _override(P5, n_test=2.5), ["p5_mnist_gan.n_test must be int | None, got 2.5 (float)"]),
    "NaN rate": (P5, _override(P5, g_lr=float("nan")), ["g_lr must be float, got nan (float)"]),
    "several problems at once": (
        P5,
        lambda p, f: (_rename(P5, "g_epochs", "g_epoch")(p, f), _override(P5, d_lr="fast")(p, f)),
        ["unknown key p5_mnist_gan.smoke.g_epoch", "missing key g_epochs", "d_lr must be float, got 'fast'"],
    ),
    "missing profiles file": (
        P5,
        _drop(P5),
        ["no profiles file", "profiles/p5_mnist_gan.yaml for stage 'p5_mnist_gan'"],
    ),
    "missing profile block": (P5, _drop(P5, "smoke"), ["profiles/p5_mnist_gan.yaml has no 'smoke' block"]),
    "override section not a mapping": (
        P5,
        lambda p, f: p.update(p5_mnist_gan=[1]),
        ["section 'p5_mnist_gan' of", "must be a mapping"],
    ),
    "unknown profile": (
        P5,
        lambda p, f: p.update(profile="huge"),
        ["unknown profile 'huge'; choose one of smoke, cpu, paper"],
    ),
}

# Bad values of the right type: caught by the method's own Config.validate(), which the pipeline
# runs before any kernel starts (and the notebook again in its first cells)
BEFORE_THE_KERNEL |= {
    "negative size": (P5, _override(P5, n_train=-5), ["n_train must be positive"]),
    "zero size": (P5, _override(P5, n_test=0), ["n_test must be positive"]),
    "unknown dataset": (P5, _override(P5, dataset="mnist9"), ["unknown dataset 'mnist9'; known:"]),
    "unknown optimizer": (P5, _override(P5, g_optimizer="adamw"), ["g_optimizer must be sgd or adam, got 'adamw'"]),
    "unknown model": (COMPARE, _override(COMPARE, model="resnet999"), ["unknown model 'resnet999'; known:"]),
    # no parameter names an attack; the training attacks of compare are named by its defences
    "unknown defence (training attack)": (
        COMPARE,
        _override(COMPARE, strengths={**PROFILES[COMPARE]["smoke"]["strengths"], "pgd_att": [0.1]}),
        ["unknown defences ['pgd_att']"],
    ),
}

# ids -> (stage, change, fragments): what only the data can tell, caught by the notebook in its first cells
IN_THE_NOTEBOOK = {
    "size larger than the data": (
        P5,
        _override(P5, n_train=1_000_000_000),
        ["ConfigError: 1000000000 examples asked of mnist5k train, which has 4000 (null means all)"],
    ),
}


@pytest.mark.parametrize("case", sorted(BEFORE_THE_KERNEL))
def test_bad_parameters_stop_before_the_kernel_starts(case, tmp_path, capfd, monkeypatch):
    stage, change, fragments = BEFORE_THE_KERNEL[case]
    ws = Workspace(tmp_path, stage)
    ws.write_params(change)
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    code = P.main(ws.argv())
    ws.assert_stopped_cleanly(code, capfd.readouterr().err, *fragments)


@pytest.mark.parametrize("case", sorted(IN_THE_NOTEBOOK))
def test_bad_values_stop_the_notebook_with_one_message(case, tmp_path, capfd):
    stage, change, fragments = IN_THE_NOTEBOOK[case]
    ws = Workspace(tmp_path, stage)
    ws.write_params(change)
    code = P.main(ws.argv())
    ws.assert_stopped_cleanly(code, capfd.readouterr().err, f"notebook {stage}.ipynb failed", *fragments)


def test_unknown_stage(tmp_path, capfd):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    code = P.main(ws.argv("p9_nothing"))
    ws.assert_stopped_cleanly(
        code, capfd.readouterr().err, "unknown stage 'p9_nothing'; notebooks: compare, p1_conv_generator_ensemble"
    )


def test_unreadable_params_file(tmp_path, capfd):
    ws = Workspace(tmp_path, P5)
    ws.params.write_text("profile: smoke\np5_mnist_gan: [unclosed\n")
    code = P.main(ws.argv())
    ws.assert_stopped_cleanly(code, capfd.readouterr().err, f"cannot read parameters file {ws.params}")


def _prepared_mnist5k(folder: Path) -> Path:
    return D.save_prepared(D.load("mnist5k", prepared_dir=None), folder)


def test_corrupt_prepared_data_names_the_file_and_the_rebuild_command(tmp_path, capfd):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    path = _prepared_mnist5k(ws.data)
    path.write_bytes(b"not a torch file" * 64)
    code = P.main(ws.argv())
    ws.assert_stopped_cleanly(
        code,
        capfd.readouterr().err,
        f"prepared dataset file {path} is corrupt or truncated; rebuild it with `dvc repro -f data`",
    )


def test_truncated_prepared_data_is_reported_as_corrupt(tmp_path):  # the stage's path: the case above
    path = _prepared_mnist5k(tmp_path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError, match="mnist5k.pt is corrupt or truncated; rebuild it with `dvc repro -f data`"):
        D.load("mnist5k", tmp_path)


def test_prepared_data_of_the_wrong_structure_is_reported_as_corrupt(tmp_path):
    path = tmp_path / "mnist5k.pt"
    torch.save({"train_x": torch.zeros(3, 1, 28, 28), "train_y": torch.zeros(2)}, path)
    with pytest.raises(ConfigError, match="mnist5k.pt is corrupt or truncated; rebuild it with `dvc repro -f data`"):
        D.load("mnist5k", tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_a_signal_mid_run_removes_the_temporary_folder_and_keeps_results(sig, tmp_path):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    proc = subprocess.Popen(
        [sys.executable, "-m", "lib.pipeline", *ws.argv()],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    running = ws.results / f".{P5}.{proc.pid}.tmp" / "figures"  # the notebook's first cells have run
    deadline = time.monotonic() + 120
    while not running.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None and running.exists(), "the stage never got going"
    time.sleep(1.0)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    ws.assert_stopped_cleanly(
        proc.returncode, err, f"{P5} stopped by {sig.name}", "left as it was", expected_code=128 + sig
    )


def test_data_stage_rejects_a_bad_section_and_leaves_its_output(tmp_path, capfd):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "keep.pt").write_bytes(b"old")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"profile": "cpu", "data": {}}))
    write_profiles(tmp_path, {"data": {"cpu": {"datasets": ["mnist9"], "extra": 1}}})
    assert D.main(["--params", str(params), "--out", str(out)]) == 2
    assert capfd.readouterr().err.strip().splitlines() == [
        f"error: the parameters of data do not match the data stage's (profile cpu): unknown key data.cpu.extra in {tmp_path}/profiles/data.yaml (is not a parameter)"
    ]
    assert [p.name for p in out.iterdir()] == ["keep.pt"] and not (tmp_path / "prepared.tmp").exists()
    write_profiles(tmp_path, {"data": {"cpu": {"datasets": ["mnist9"]}}})
    assert D.main(["--params", str(params), "--out", str(out)]) == 2
    assert "unknown dataset 'mnist9'" in capfd.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.pt"]


# --- checkpoints (read by the model cache) ---------------------------------------------------


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))


def test_checkpoint_round_trip(tmp_path):
    saved = checkpoint.save(_net(), tmp_path / "m.pt")
    loaded = checkpoint.load(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)), saved, "dvc repro -f p5_mnist_gan"
    )
    assert torch.equal(loaded[1].weight, _net()[1].weight)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong architecture", "missing"])
def test_damaged_checkpoint_names_the_file_and_the_rebuild_command(damage, tmp_path):
    path = checkpoint.save(_net(), tmp_path / "m.pt")
    blob = path.read_bytes()
    model = _net()
    if damage == "garbage":
        path.write_bytes(b"\x00junk" * 100)
    elif damage == "truncated":
        path.write_bytes(blob[: len(blob) // 2])
    elif damage == "wrong architecture":
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 5))
    else:
        path.unlink()
    expected = {
        "garbage": "is corrupt or truncated",
        "truncated": "is corrupt or truncated",
        "wrong architecture": "does not fit a Sequential of this configuration",
        "missing": "does not exist",
    }[damage]
    with pytest.raises(ConfigError, match=f"checkpoint .*m.pt {expected}.*`dvc repro -f p5_mnist_gan`"):
        checkpoint.load(model, path, "dvc repro -f p5_mnist_gan")
