"""Faults of the environment stop a run cleanly: two runs at once, no space, no permission, damaged
stores, bad parameters files. Each: the exit code, exactly one ``error:`` line, ``results/``
byte-identical, no temporary file or folder left, and the store still loadable.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import lib.data as D
from lib import cache
from lib import pipeline as P
from lib.errors import ConfigError
from lib.params import read_params
from lib.runtime import REPO_ROOT
from lib.stagelock import StageBusy, lock_path, stage_lock, stale_note
from tests.test_bad_input import P5, Workspace, _digest, _override, _unchanged, write_profiles
from tests.test_cache import flip_byte_of

PIPELINE = [sys.executable, "-m", "lib.pipeline"]


def _leftovers(results: Path) -> list[str]:
    """Temporary folders, moved-aside results and owner files a run may leave in a results root."""
    return sorted(p.name for p in results.iterdir() if p.name.endswith((".tmp", ".old", ".owner")))


def _store_entries_verified(models: Path) -> int:
    """Every entry of a model and evaluation store loads and matches its digest; no temporary file."""
    files = [f for f in models.rglob("*") if f.is_file() and not {".locks", ".logs"} & set(f.parts)]
    assert not [f for f in files if f.name.endswith(".tmp")], "a partial store entry was left"
    for f in files:
        fields = ("modules", "record", "random_state") if ".evaluations" not in f.parts else ("value", "random_state")
        cache._read_entry(f, fields, "retrain")
    return len(files)


# --- two runs at once ------------------------------------------------------------------------


def _refused(code: int, err: str) -> bool:
    lines = err.strip().splitlines()
    return code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {P5} is already running (PID ")


def test_of_two_runs_started_together_one_refuses_at_once_naming_the_other(p5_smoke_runs):
    (refused,) = p5_smoke_runs["refused"]["together"]  # the conftest fixture starts them (its first run)
    assert _refused(*refused), refused
    assert ", started 20" in refused[1] and "wait for it to finish" in refused[1]


def test_a_run_started_while_another_runs_refuses_and_touches_nothing(p5_smoke_runs):
    assert _refused(*p5_smoke_runs["refused"]["late"]), p5_smoke_runs["refused"]["late"]
    results = p5_smoke_runs["first"][0]
    assert sorted(p.name for p in results.iterdir()) == [f".{P5}.lock", P5]


def test_the_run_that_holds_the_lock_finishes_complete_with_a_lone_runs_numbers(p5_smoke_runs):
    out, lone = p5_smoke_runs["first"][0] / P5, p5_smoke_runs["second"][0] / P5  # the second: a lone run from the store
    for name in P.OUTPUTS:
        assert (out / name.format(stage=P5)).exists(), name
    assert json.loads((out / "metrics.json").read_text()) == json.loads((lone / "metrics.json").read_text())
    assert (
        json.loads((out / "details.json").read_text())["results"]
        == json.loads((lone / "details.json").read_text())["results"]
    )
    assert sorted(p.name for p in (out / "figures").iterdir()) == sorted(p.name for p in (lone / "figures").iterdir())
    assert _store_entries_verified(p5_smoke_runs["root"] / "models") > 10
    # test_model_store_stage checks these numbers against a recorded lone run (tests/golden/)


def test_a_damaged_store_entry_is_reported_on_the_terminal_and_rebuilt(p5_smoke_runs, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(p5_smoke_runs["root"] / "models", models)
    entry = max((models / P5).glob("*.pt"), key=lambda f: f.stat().st_size)
    blob = torch.load(entry, weights_only=True)
    flip_byte_of(entry, next(iter(next(iter(blob["modules"].values())).values())))
    run = subprocess.run(
        [*PIPELINE, P5, "--profile", "smoke", "--results", str(tmp_path / "results"), "--models", str(models)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    notes = [line for line in run.stdout.splitlines() if line.startswith("note: ")]
    assert notes == [f"note: {entry} does not match the digest recorded when it was written; rebuilt"]
    lone = p5_smoke_runs["second"][0] / P5
    assert json.loads((tmp_path / "results" / P5 / "metrics.json").read_text()) == json.loads(
        (lone / "metrics.json").read_text()
    )
    assert _store_entries_verified(models) > 10


def _hold_lock(results: Path, stage: str) -> subprocess.Popen:
    """Another process holding ``stage``'s lock until killed."""
    code = textwrap.dedent(f"""
        import sys, time
        from lib.stagelock import stage_lock
        with stage_lock({str(results)!r}, {stage!r}):
            print("held", flush=True)
            time.sleep(600)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_stops_the_run_before_anything_is_written(tmp_path, capfd):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    holder = _hold_lock(ws.results, P5)
    try:
        ws.before = _digest(ws.results)
        code = P.main(ws.argv())
        ws.assert_stopped_cleanly(code, capfd.readouterr().err, f"{P5} is already running (PID {holder.pid}, started ")
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    holder = _hold_lock(tmp_path, P5)
    holder.kill()  # SIGKILL: no cleanup ran, its owner file stays
    holder.wait()
    assert (tmp_path / f".{P5}.lock.owner").exists()
    with stage_lock(tmp_path, P5) as stale:
        assert stale["pid"] == holder.pid
        assert stale_note(P5, stale).startswith(
            f"note: took over the lock of an earlier {P5} run that ended without releasing it (PID {holder.pid}"
        )
        with pytest.raises(StageBusy):  # and it is held again
            with stage_lock(tmp_path, P5):
                pass
    assert lock_path(tmp_path, P5).exists() and not (tmp_path / f".{P5}.lock.owner").exists()
    with stage_lock(tmp_path, P5) as stale:
        assert stale is None


def test_leftovers_of_a_killed_run_are_cleaned_or_restored(tmp_path):
    final = tmp_path / P5
    (tmp_path / f".{P5}.4242.tmp" / "figures").mkdir(parents=True)
    (tmp_path / f".{P5}.old").mkdir()
    final.mkdir()
    (final / "metrics.json").write_text("{}")
    assert "removed" in P._recover(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == [P5]
    final.rename(tmp_path / f".{P5}.old")  # killed between the swap's two renames
    assert "restored" in P._recover(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == [P5] and (final / "metrics.json").exists()
    assert P._recover(final) is None


def test_an_incomplete_folder_is_never_installed(tmp_path):
    tmp = tmp_path / f".{P5}.1.tmp"
    tmp.mkdir()
    (tmp / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match=f"did not write {P5}.ipynb, {P5}.html, tables, figures, claims.md"):
        P._check_complete(tmp, P5)


def test_the_outputs_checked_are_dvc_yamls_outputs_of_each_stage():
    import yaml

    stages = yaml.safe_load((REPO_ROOT / "dvc.yaml").read_text())["stages"]
    for stage, spec in stages.items():
        if not stage.startswith(("p", "compare")):
            continue
        outs = [
            next(iter(o)) if isinstance(o, dict) else o
            for key in ("outs", "metrics", "plots")
            for o in spec.get(key, [])
        ]
        ours = sorted(o.removeprefix(f"results/{stage}/") for o in outs if o.startswith(f"results/{stage}/"))
        assert ours == sorted(n.format(stage=stage) for n in P.OUTPUTS), stage


# --- no permission ---------------------------------------------------------------------------


def _without_permission_override() -> None:
    """In the child, before exec: drop the capabilities that let root ignore file permissions
    (``prctl(PR_CAPBSET_DROP)`` of CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH); a no-op for other users."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2):
        libc.prctl(24, capability, 0, 0, 0)


RUN_EACH = textwrap.dedent("""
    import contextlib, io, json, sys
    from lib import data, pipeline
    results = []
    for module, argv in json.loads(sys.argv[1]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = {"pipeline": pipeline, "data": data}[module].main(argv)
        results.append([code, err.getvalue()])
    print(json.dumps(results))
""")
READ_ONLY = ("results root", "stage folder", "a subfolder of the stage's")


@pytest.fixture(scope="module")
def without_permission(tmp_path_factory):
    """p5's stage with one folder of its results read-only (each case of READ_ONLY), and the data
    stage with its data folder read-only, run in one process that cannot ignore permissions."""
    cases, calls = {}, []
    for case in READ_ONLY:
        ws = Workspace(tmp_path_factory.mktemp("perm"), P5)
        ws.write_params(_unchanged)
        target = {
            "results root": ws.results,
            "stage folder": ws.results / P5,
            "a subfolder of the stage's": ws.results / P5 / "figures",
        }[case]
        cases[case] = (ws, target)
        calls.append(["pipeline", ws.argv()])
    data_root = tmp_path_factory.mktemp("perm-data")
    (data_root / "params.yaml").write_text("profile: smoke\ndata: {}\n")
    write_profiles(data_root, {"data": {"smoke": {"datasets": ["mnist5k"]}}})
    (data_root / "data").mkdir()
    cases["data"] = (None, data_root / "data")
    calls.append(["data", ["--params", str(data_root / "params.yaml"), "--out", str(data_root / "data" / "prepared")]])
    for _, target in cases.values():
        os.chmod(target, 0o555)
    try:
        for ws, _ in cases.values():
            if ws is not None:
                ws.before = _digest(ws.results)
        run = subprocess.run(
            [sys.executable, "-c", RUN_EACH, json.dumps(calls)],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=_without_permission_override,
        )
    finally:
        for _, target in cases.values():
            os.chmod(target, 0o755)
    assert run.returncode == 0, run.stderr
    return {case: (*cases[case], *outcome) for case, outcome in zip(cases, json.loads(run.stdout.splitlines()[-1]))}


@pytest.mark.parametrize("read_only", READ_ONLY)
def test_no_permission_on_results_stops_before_anything_is_written(read_only, without_permission):
    ws, target, code, err = without_permission[read_only]
    ws.assert_stopped_cleanly(
        code,
        err,
        f"no permission to write {target} (permission denied); make {target}/ writable "
        "for this user, or point --results at another folder",
    )
    assert _leftovers(ws.results) == []


def test_no_permission_on_the_data_folder_stops_the_data_stage_with_one_line(without_permission):
    _, read_only, code, err = without_permission["data"]
    assert code == 2 and err.strip().splitlines() == [
        f"error: no permission to write {read_only}/.data.lock (permission denied); make {read_only}/ writable "
        "for this user, or point --out at another folder"
    ], err
    assert list(read_only.iterdir()) == []


# --- no space --------------------------------------------------------------------------------

IN_A_FULL_DISK = textwrap.dedent("""
    import hashlib, json, shutil, subprocess, sys
    from pathlib import Path
    from lib import cache
    mount, committed, params, report = (Path(a) for a in sys.argv[1:5])
    results = mount / "results" if mount.name == "results" else mount.parent / "results"
    models = mount / "models" if mount.name == "models" else mount.parent / "models"
    shutil.copytree(committed, results / committed.name)
    def listing(root):
        return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
                for p in sorted(root.rglob("*")) if not (p.parent == root and p.name.endswith(".lock"))}
    before = listing(results)
    run = subprocess.run([sys.executable, "-m", "lib.pipeline", committed.name, "--params", str(params),
                          "--results", str(results), "--models", str(models)], capture_output=True, text=True)
    entries = []
    for f in sorted(p for p in models.rglob("*") if p.is_file() and ".locks" not in p.parts):
        fields = ("value", "random_state") if ".evaluations" in f.parts else ("modules", "record", "random_state")
        try:
            cache._read_entry(f, fields, "retrain")
            entries.append([f.name, "verified"])
        except Exception as err:
            entries.append([f.name, repr(err)])
    report.write_text(json.dumps({"code": run.returncode, "stderr": run.stderr, "same": listing(results) == before,
                                  "results": sorted(p.name for p in results.iterdir()), "entries": entries}))
""")


def _run_on_a_small_disk(tmp_path: Path, full: str, size: str) -> dict:
    """p5's smoke stage with ``full`` (results or models) on a tmpfs of ``size``, in a mount
    namespace of its own (``unshare``: no root needed, nothing mounted outside the test)."""
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    mount = tmp_path / "disk" / full
    mount.mkdir(parents=True)
    script, report = tmp_path / "in_a_full_disk.py", tmp_path / "report.json"
    script.write_text(IN_A_FULL_DISK)
    inner = f"mount -t tmpfs -o size={size} tmpfs {mount} && exec {sys.executable} {script} {mount} {REPO_ROOT / 'results' / P5} {ws.params} {report}"
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", inner], cwd=REPO_ROOT, check=True, timeout=300
    )
    return json.loads(report.read_text())


def test_results_on_a_full_disk_stop_with_one_line_and_leave_results_as_they_were(tmp_path):
    committed = sum(f.stat().st_size for f in (REPO_ROOT / "results" / P5).rglob("*") if f.is_file())
    report = _run_on_a_small_disk(tmp_path, "results", f"{committed // 1024 + 64}k")  # full at the first figure or so
    lines = report["stderr"].strip().splitlines()
    assert report["code"] == 2 and len(lines) == 1, report["stderr"]
    assert lines[0].startswith(f"error: no space left on the device holding {tmp_path}/disk/results/results/"), lines[0]
    assert lines[0].endswith("free some space there, or point --results at another folder"), lines[0]
    assert report["same"] and report["results"] == [f".{P5}.lock", P5]


def test_a_model_store_on_a_full_disk_stops_with_one_line_and_no_partial_entry(tmp_path):
    report = _run_on_a_small_disk(tmp_path, "models", "1000k")  # room for the first model (~700 kB), not the next
    lines = report["stderr"].strip().splitlines()
    assert report["code"] == 2 and len(lines) == 1, report["stderr"]
    assert lines[0].startswith(
        f"error: no space left on the device holding {tmp_path}/disk/models/models/ (writing {tmp_path}/disk/models/models/"
    ), lines[0]
    assert lines[0].endswith(".pt); free some space there, or point --models at another folder"), lines[0]
    assert report["same"] and report["results"] == [f".{P5}.lock", P5]
    assert report["entries"] and all(state == "verified" for _, state in report["entries"]), report["entries"]


def test_a_failed_store_write_names_the_folder_and_leaves_no_partial_file(tmp_path, monkeypatch):
    import errno

    from lib import checkpoint

    real_open = open

    class Full:
        def __init__(self, path, mode):
            self.f = real_open(path, mode)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.f.write(bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no file name

    monkeypatch.setattr(checkpoint, "open", Full, raising=False)
    with pytest.raises(ConfigError) as err:
        checkpoint.write({"w": torch.zeros(100)}, tmp_path / "store" / "m.pt")
    assert str(err.value).startswith(
        f"no space left on the device holding {tmp_path}/store/ (writing {tmp_path}/store/m.pt)"
    )
    assert list((tmp_path / "store").iterdir()) == []


# --- parameters files ------------------------------------------------------------------------


def test_a_key_set_twice_is_an_error_naming_the_key_and_both_lines(tmp_path, capfd):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    profile = tmp_path / "profiles" / f"{P5}.yaml"
    lines = profile.read_text().splitlines()
    at = lines.index("smoke:") + 1
    lines.insert(at, "  g_epochs: 3")
    lines.insert(at, "  g_epochs: 2")
    profile.write_text("\n".join(lines) + "\n")
    code = P.main(ws.argv())
    ws.assert_stopped_cleanly(
        code,
        capfd.readouterr().err,
        f"profiles file {profile} sets 'g_epochs' twice in one block (lines {at + 1} and {at + 2}); keep one",
    )


@pytest.mark.parametrize("case", ["empty params.yaml", "params.yaml without a profile", "empty --profile"])
def test_no_profile_is_an_error_naming_the_three(case, tmp_path, capfd):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    argv = ws.argv()
    if case == "empty params.yaml":
        ws.params.write_text("")
    elif case == "params.yaml without a profile":
        ws.params.write_text(f"{P5}: {{}}\n")
    else:
        argv += ["--profile", ""]
    code = P.main(argv)
    expected = (
        "empty profile; choose one of smoke, cpu, paper"
        if case == "empty --profile"
        else f"{ws.params} sets no profile; add a line 'profile: cpu' (one of smoke, cpu, paper) or pass --profile"
    )
    ws.assert_stopped_cleanly(code, capfd.readouterr().err, expected)


def test_a_yaml_syntax_error_names_the_file_once_and_the_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("profile: smoke\np5_mnist_gan: [unclosed\n")
    with pytest.raises(ConfigError) as err:
        read_params(path)
    assert str(err.value).count(str(path)) == 1 and "(line 3, column 1)" in str(err.value)


def test_a_negative_seed_names_the_seed(tmp_path, capfd, monkeypatch):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_override(P5, seed=-1))
    monkeypatch.setattr("papermill.execute_notebook", lambda *a, **k: pytest.fail("a kernel was started"))
    ws.assert_stopped_cleanly(
        P.main(ws.argv()), capfd.readouterr().err, "seed must be an integer in [0, 2**32 - 1], got -1"
    )


# --- prepared data and provenance --------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist5k():
    return D.load("mnist5k", prepared_dir=None)


@pytest.mark.parametrize(
    "damage", ["label out of range", "negative label", "float labels", "float images", "class count"]
)
def test_prepared_data_is_checked_on_load_and_names_the_fix(damage, mnist5k, tmp_path):
    path = D.save_prepared(mnist5k, tmp_path)
    blob = torch.load(path, weights_only=True)
    if damage == "label out of range":
        blob["train_y"][7] = 99
    elif damage == "negative label":
        blob["test_y"][0] = -1
    elif damage == "float labels":
        blob["train_y"] = blob["train_y"].float()
    elif damage == "float images":
        blob["train_x"] = blob["train_x"].float()
    else:
        blob["num_classes"] = 3
    torch.save(blob, path)
    expected = {
        "label out of range": "holds 1 train labels outside 0..9 (e.g. [99])",
        "negative label": "holds 1 test labels outside 0..9 (e.g. [-1])",
        "float labels": "holds train labels of dtype torch.float32, not integers",
        "float images": "holds train images of dtype torch.float32 and shape (1, 28, 28), not uint8",
        "class count": "says 3 classes, mnist5k has 10",
    }[damage]
    with pytest.raises(ConfigError) as err:
        D.load("mnist5k", tmp_path)
    assert str(err.value).startswith(f"prepared dataset file {path} {expected}")
    assert str(err.value).endswith("; rebuild it with `dvc repro -f data`")


def test_labels_out_of_range_stop_the_stage_with_one_line(tmp_path, capfd, mnist5k):
    ws = Workspace(tmp_path, P5)
    ws.write_params(_unchanged)
    path = D.save_prepared(mnist5k, ws.data)
    blob = torch.load(path, weights_only=True)
    blob["train_y"][0] = 99
    torch.save(blob, path)
    ws.assert_stopped_cleanly(
        P.main(ws.argv()),
        capfd.readouterr().err,
        f"prepared dataset file {path} holds 1 train labels outside 0..9 (e.g. [99])",
    )


def test_a_fallback_to_the_datasets_source_is_recorded(mnist5k, tmp_path):
    assert D.load("mnist5k", tmp_path).source == f"{mnist5k.source}, read directly: {tmp_path}/mnist5k.pt was missing"
    D.save_prepared(mnist5k, tmp_path)
    assert D.load("mnist5k", tmp_path).source == mnist5k.source
