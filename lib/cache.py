"""Trained models as artefacts: each saved once under ``models/<stage>/``, keyed by what determines it.

A stage's notebook opens a :class:`ModelStore` (the pipeline passes ``models/<stage>``); every
training run wrapped in :func:`cached` (``lib.train.train(..., cache_as=name)`` does it) then
either loads its entry or trains and saves one. The key is a hash of

- the modules' initial weights and structure (so the seed, the architecture and, for a
  fine-tuning, the model it starts from),
- everything the run is given: training config, data tensors (so the dataset, split, subset and
  seed), the perturbation source and its parameters, hooks and the values they capture,
- the code that trains: the training loop's functions, the model and attack-step files, the
  source of every ``lib`` function and class involved and of the function that set the training up.

Editing a table, a figure, a claim or an evaluation changes none of these, so it never retrains.
Evaluations (attacks on a trained model, :func:`remembered`) are kept the same way, in the local
folder ``models/.evaluations/<stage>`` (not a DVC output, never shared): keyed by the model's
weights, the inputs, the attack and its parameters, the evaluation code and the random state, so
a re-run that changed only a table, a figure or a claim computes no attack at all.
A run that does not seed itself (``seeded=False``) also keys on the random generators' state at its
start. Each entry keeps the generators' state at the end of its training, and loading it restores
that state, so what follows draws exactly the numbers it drew after training: a stage run from the
store gives the metrics of the run that trained, which are those of the same code without a store.
Each entry also records the digest of its content when written (:func:`lib.checkpoint.digest`);
loading checks it, so a flipped byte is a damaged entry, reported (:func:`rebuilt`, which the
pipeline prints on the terminal) and computed again, never silently used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import json
import random
import re
import textwrap
import time
import types
import weakref
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
from filelock import FileLock

from lib import checkpoint
from lib.errors import ConfigError
from lib.runtime import REPO_ROOT, device_name, repo_relative

FORMAT = 3  # bump when the file layout changes (old entries then miss); 3: each entry carries its digest

# Files whose every line can change what a training run produces, and the functions of the
# training loop (by name: editing the rest of their modules, e.g. a progress message, retrains nothing).
TRAINING_FILES = ("lib/augment.py", "lib/models", "lib/attacks/common.py", "lib/attacks/threat.py")
# Files whose every line can change what an evaluation returns (besides the attack's own module).
EVALUATION_FILES = ("lib/models", "lib/attacks", "lib/evaluate.py", "lib/crosscheck.py", "lib/runtime.py")
TRAINING_FUNCTIONS = (
    "lib.train:_train",
    "lib.train:make_optimizer",
    "lib.train:_split_labels",
    "lib.train:_ema",
    "lib.train:training_precision",
    "lib.data:batches",
    "lib.runtime:seed_everything",
    "lib.runtime:Acceleration",
    "lib.runtime:DryRun",
)


@dataclasses.dataclass
class ModelStore:
    """Where trained models live; ``root=None`` keeps nothing (unit tests, smoke notebooks)."""

    root: Path | None = None
    retrain: bool = False

    def path(self, name: str, key: str) -> Path:
        return Path(self.root) / f"{slug(name)}-{key}.pt"

    def lock(self, path: Path) -> FileLock:
        """The lock of one entry (``models/.locks/<stage>/``, outside the store DVC tracks): whoever holds it
        trains the entry, and a second process that wants the same entry waits, then loads it."""
        folder = Path(self.root).parent / ".locks" / Path(self.root).name
        folder.mkdir(parents=True, exist_ok=True)
        return FileLock(folder / f"{path.stem}.lock")

    @property
    def evaluations(self) -> Path | None:
        """The local evaluation store beside the model store: ``models/.evaluations/<stage>``."""
        return None if self.root is None else Path(self.root).parent / ".evaluations" / Path(self.root).name


def slug(name: str) -> str:
    """A model's name as its store files spell it."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", name).strip("-").lower()[:60] or "model"


_store = ModelStore()


def open_store(root: str | Path | None, retrain: bool = False) -> ModelStore:
    """Make ``root`` the store of every following :func:`cached` call (``None``: no cache)."""
    global _store
    _RUNS.clear()
    _REBUILT.clear()
    _ON_TRAIN.clear()  # a new run: whoever opens the store sets its own check
    _UNITS.clear()
    _store = ModelStore(Path(root) if root is not None else None, retrain)
    if _store.root is not None:
        for folder in (_store.root, _store.evaluations):
            folder.mkdir(parents=True, exist_ok=True)
            for leftover in folder.glob(".*.tmp"):  # a run killed while saving
                leftover.unlink()
    return _store


def store() -> ModelStore:
    """The store in use."""
    return _store


# --------------------------------------------------------------------------------------------------
# The key


class _Fingerprint:
    """A sha256 over any mix of tensors, modules, configs, callables and plain values."""

    def __init__(self):
        self.h = hashlib.sha256()
        self.seen: dict[int, object] = {}  # id -> object: holding it keeps its id from being reused

    def text(self, s: str) -> None:
        self.h.update(s.encode())
        self.h.update(b"\0")

    def add(self, obj) -> None:  # noqa: C901 - one case per kind of value, flat
        if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
            self.text(f"{type(obj).__name__}:{obj!r}")
            return
        if id(obj) in self.seen:
            self.text("<seen>")
            return
        self.seen[id(obj)] = obj
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            self.text(f"tensor:{t.dtype}:{tuple(t.shape)}")
            self.h.update(memoryview((t.float() if t.dtype == torch.bfloat16 else t).numpy()).cast("B"))  # no copy
        elif isinstance(obj, nn.Module):
            self.text(f"module:{repr(obj)}")
            self._code(type(obj))
            self.add({k: v for k, v in vars(obj).items() if not k.startswith("_") and k != "training"})
            self.add(obj.state_dict())
        elif isinstance(obj, torch.optim.Optimizer):
            self.text(f"optimizer:{type(obj).__name__}")
            self.add([{k: v for k, v in g.items() if k != "params"} for g in obj.param_groups])
        elif isinstance(obj, torch.utils.data.DataLoader):
            self.text(f"loader:{obj.batch_size}:{obj.drop_last}:{type(obj.sampler).__name__}")
            self.add(obj.dataset)
            self.add(obj.generator.initial_seed() if obj.generator is not None else None)
        elif isinstance(obj, torch.utils.data.TensorDataset):
            self.add(obj.tensors)
        elif isinstance(obj, torch.Generator):
            self.text(f"generator:{obj.initial_seed()}")
        elif isinstance(obj, Mapping):
            self.text(f"map:{len(obj)}")
            for k in sorted(obj, key=repr):
                self.add(k)
                self.add(obj[k])
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
            self.text(f"{type(obj).__name__}:{len(items)}")
            for v in items:
                self.add(v)
        elif isinstance(obj, functools.partial):
            self.text("partial")
            self.add((obj.func, obj.args, obj.keywords))
        elif isinstance(obj, types.MethodType):
            self.add((obj.__func__, obj.__self__))
        elif isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.CodeType)):
            self._code(obj)
            cells = getattr(obj, "__closure__", None) or ()
            self.add([c.cell_contents for c in cells])
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            self._code(type(obj))
            self.add({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})
        elif isinstance(obj, type):
            self._code(obj)
        elif hasattr(obj, "__dict__"):
            self._code(type(obj))
            self.add(vars(obj))
        else:
            self.text(f"{type(obj).__qualname__}:{obj!r}")

    def _code(self, obj) -> None:
        """Name, and for the project's own code its source (for classes, along the MRO)."""
        for item in obj.__mro__ if isinstance(obj, type) else (obj,):
            module = getattr(item, "__module__", None) or getattr(inspect.getmodule(item), "__name__", "")
            self.text(f"code:{module}:{getattr(item, '__qualname__', getattr(item, 'co_name', repr(item)))}")
            if str(module).startswith("lib") or isinstance(item, types.CodeType):
                try:
                    self.text(inspect.getsource(item))
                except (OSError, TypeError):
                    pass

    def hexdigest(self) -> str:
        return self.h.hexdigest()


def _hash_files(h, entries) -> None:
    for entry in entries:
        path = REPO_ROOT / entry
        for f in sorted(path.rglob("*.py")) if path.is_dir() else [path]:
            h.update(str(f.relative_to(REPO_ROOT)).encode())
            h.update(f.read_bytes())


@functools.cache
def _training_code() -> str:
    import importlib

    h = hashlib.sha256()
    _hash_files(h, TRAINING_FILES)
    for entry in TRAINING_FUNCTIONS:
        module, name = entry.split(":")
        h.update(entry.encode())
        h.update(inspect.getsource(getattr(importlib.import_module(module), name)).encode())
    return h.hexdigest()


def key_of(
    name: str, modules: Mapping[str, nn.Module], key=None, caller: types.CodeType | None = None, seeded: bool = True
) -> str:
    """The cache key of a training run (24 hex digits); ``seeded=False`` adds the random state."""
    fp = _Fingerprint()
    fp.text(f"format:{FORMAT}:{name}:{_training_code()}")
    fp.add(dict(modules))
    fp.add(key)
    if caller is not None:
        fp.add(caller)
    if not seeded:
        fp.add(random_state())
    return fp.hexdigest()[:24]


def random_state() -> dict:
    """The state of python's, numpy's and torch's (CPU and CUDA) generators, as tensors and numbers."""
    version, py_state, py_gauss = random.getstate()
    _, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [version, torch.tensor(py_state, dtype=torch.int64), py_gauss],
        "numpy": [torch.from_numpy(np_keys.astype(np.int64)), int(np_pos), int(np_has_gauss), float(np_gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_random_state(state: dict) -> None:
    """Restore what :func:`random_state` returned."""
    version, py_state, py_gauss = state["python"]
    random.setstate((version, tuple(py_state.tolist()), py_gauss))
    np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state(("MT19937", np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------
# Train or load


def _write_entry(path: Path, content: dict) -> None:
    """One file per entry, written whole (a kill never leaves half of one under its name), with
    the digest of its content."""
    checkpoint.write({"format": FORMAT, **content, "digest": checkpoint.digest(content)}, path)


class _Damage(ValueError):
    """What is wrong with a store entry, in words."""


def _read_entry(path: Path, fields: tuple[str, ...], rebuild: str) -> dict:
    """An entry's content, checked: this format, every field, the digest recorded when it was
    written. :class:`_Damage` naming the damage otherwise."""
    blob = checkpoint.read(path, rebuild)
    if blob.get("format") != FORMAT or not all(k in blob for k in (*fields, "digest")):
        raise _Damage("is unreadable or of another layout")
    content = {k: blob[k] for k in fields}
    if checkpoint.digest(content) != blob["digest"]:
        raise _Damage("does not match the digest recorded when it was written")
    return content


_DAMAGE = (ConfigError, KeyError, ValueError, TypeError, RuntimeError, IndexError, AttributeError)
_MODEL_FIELDS = ("modules", "record", "random_state")


def _damaged(path: Path, err: Exception) -> None:
    """Report a damaged entry (here, in the notebook, and in :func:`rebuilt` for the terminal) and remove it."""
    why = str(err) if isinstance(err, _Damage) else "is corrupt or does not fit this run"
    print(f"store entry {repo_relative(path)} {why}; computing it again")
    _REBUILT.append({"path": repo_relative(path), "why": why})
    path.unlink(missing_ok=True)


def _save(path: Path, modules: Mapping[str, nn.Module], record: dict) -> None:
    _write_entry(
        path,
        {
            "modules": {n: m.state_dict() for n, m in modules.items()},
            "record": json.dumps(record),
            "random_state": random_state(),
        },
    )


def _load(path: Path, modules: Mapping[str, nn.Module]) -> dict | None:
    """The entry's record after loading its weights into ``modules`` and its random state; None
    (and a message) if damaged."""
    try:
        blob = _read_entry(path, _MODEL_FIELDS, "retrain")
        states = blob["modules"]
        if set(states) != set(modules):
            raise _Damage("holds other modules than this run trains")
        saved = {n: {k: v.clone() for k, v in m.state_dict().items()} for n, m in modules.items()}
        try:
            for n, m in modules.items():
                m.load_state_dict(states[n])
            record = json.loads(blob["record"])
            set_random_state(blob["random_state"])
        except BaseException:
            for n, m in modules.items():  # never leave half an entry in the modules
                m.load_state_dict(saved[n])
            raise
        return record
    except _DAMAGE as err:
        _damaged(path, err)
        return None


LOG_WIDTH = 110  # characters: a notebook's output line fits a 1,300-pixel page without the browser breaking a word


def log(line: str) -> None:
    """One line of the run's log, wrapped between words at :data:`LOG_WIDTH`."""
    print(textwrap.fill(line, LOG_WIDTH, subsequent_indent="    ", break_long_words=False, break_on_hyphens=False))


def cached(
    name: str,
    modules: Mapping[str, nn.Module],
    fit: Callable[[], dict | None],
    key=None,
    caller: types.CodeType | None = None,
    seeded: bool = False,
) -> dict:
    """Train ``modules`` in place with ``fit()`` (returns a JSON-able record), or load them.

    ``key``: everything besides the modules' initial state that determines the result.
    ``caller``: the code that set the run up (default: the function calling this one).
    ``seeded``: ``fit`` seeds the generators itself (else their state joins the key).
    Returns the record plus ``seconds`` (training wall time, from the run that trained) and
    ``loaded`` (whether it came from the store); every call is also listed in :func:`runs`.
    """
    caller = caller or inspect.currentframe().f_back.f_code
    name = _in_unit(name, seeded)
    for check in _ON_TRAIN:
        check(name)
    k = key_of(name, modules, key, caller, seeded)
    st = store()
    path = st.path(name, k) if st.root is not None else None
    if _PROBE and _PROBE[-1] == name:
        raise Probed(name, path is not None and path.exists())
    record = _load(path, modules) if path is not None and path.exists() and not st.retrain else None
    if record is None and _LOAD_ONLY:
        raise NotStored(name)
    if record is None and path is not None:
        with st.lock(path):  # one trainer per entry: whoever waited here loads what the other one trained
            record = _load(path, modules) if path.exists() and not st.retrain else None
            return _train_or_load(name, modules, fit, path, record)
    return _train_or_load(name, modules, fit, path, record)


def _train_or_load(name: str, modules: Mapping[str, nn.Module], fit: Callable, path: Path | None, record):
    """``record`` (the entry just loaded) or, when None, ``fit()``'s, after training (and saving to ``path``)."""
    if record is not None:
        record["loaded"] = True
        elsewhere = f" on {record['device']}" if record["device"] != device_name() else ""  # the first line names ours
        log(f"{name}: loaded{_outcome(record)} (trained in {record['seconds']:.0f} s{elsewhere})")
    else:
        t0 = time.perf_counter()
        record = dict(fit() or {})
        record["seconds"] = time.perf_counter() - t0
        record["device"] = device_name()
        if path is not None:
            _save(path, modules, record)
        record["loaded"] = False
        log(f"{name}: trained in {record['seconds']:.0f} s{_outcome(record)}")
    _RUNS.append(
        {"name": name, "seconds": round(record["seconds"], 2), "loaded": record["loaded"], "device": record["device"]}
    )
    return record


_RUNS: list[dict] = []
_REBUILT: list[dict] = []
_ON_TRAIN: list[Callable[[str], None]] = []  # called with each model's name before it is trained or loaded
_UNIT: list[dict] = []  # the unit being obtained (lib.units): its name, and whether it stored its entry yet
_UNITS: list[str] = []  # the units obtained since the store was opened
_PROBE: list[str] = []  # the unit whose key is probed (:func:`probing`)
_LOAD_ONLY: list[bool] = []  # inside :func:`load_only`


class UnitError(RuntimeError):
    """A unit that does not follow the contract of :mod:`lib.units` (one seeded entry)."""


class Probed(Exception):
    """Raised by :func:`cached` inside :func:`probing`: the unit's entry ``name`` is stored or not."""

    def __init__(self, name: str, stored: bool):
        super().__init__(name)
        self.name, self.stored = name, stored


class NotStored(LookupError):
    """Raised by :func:`cached` inside :func:`load_only` for an entry the store lacks."""

    def __init__(self, name: str):
        super().__init__(f"'{name}' is not in the model store")
        self.name = name


@contextlib.contextmanager
def unit_scope(name: str) -> Iterator[None]:
    """Within: the training of the unit ``name`` (:mod:`lib.units`). Its one :func:`cached` call stores the entry
    under the unit's name and must be seeded; the unit joins :func:`units_obtained`."""
    _UNIT.append({"name": name, "stored": False})
    try:
        yield
        if not _UNIT[-1]["stored"]:
            raise UnitError(f"unit '{name}' trained no model through the store (its fit must call lib.cache.cached)")
    finally:
        _UNIT.pop()
    _UNITS.append(name)


def _in_unit(name: str, seeded: bool) -> str:
    """The store name of a :func:`cached` call: inside a unit, the unit's (once, and seeded)."""
    if not _UNIT:
        return name
    unit = _UNIT[-1]
    if unit["stored"]:
        raise UnitError(f"unit '{unit['name']}' stores a second model ('{name}'): one entry per unit")
    if not seeded:
        raise UnitError(f"unit '{unit['name']}' trains unseeded ('{name}'): a unit seeds its training itself")
    unit["stored"] = True
    return unit["name"]


def units_obtained() -> list[str]:
    """The units obtained (trained or loaded) since the store was opened."""
    return list(_UNITS)


def in_unit() -> bool:
    return bool(_UNIT)


@contextlib.contextmanager
def probing(name: str) -> Iterator[None]:
    """Within: obtaining the unit ``name`` stops at its key, raising :class:`Probed` (stored or not); the units
    it builds on are loaded as usual."""
    _PROBE.append(name)
    try:
        yield
    finally:
        _PROBE.pop()


@contextlib.contextmanager
def load_only() -> Iterator[None]:
    """Within: :func:`cached` loads what the store has and raises :class:`NotStored` for anything else (a worker
    loading the units a unit builds on never trains them)."""
    _LOAD_ONLY.append(True)
    try:
        yield
    finally:
        _LOAD_ONLY.pop()


def on_train(check: Callable[[str], None] | None) -> None:
    """Call ``check(name)`` before every model is trained or loaded (``None``: stop); it may raise to stop the run."""
    _ON_TRAIN.clear()
    if check is not None:
        _ON_TRAIN.append(check)


def _outcome(record: dict) -> str:
    """', 10 epochs, final val acc 97.4%' from a training record's history, or ', 10 epochs, final
    test acc under G 83.2%' from a generator's curve ('' when the record has neither)."""
    history = record.get("history") or []
    if not history:
        curve = record.get("curve") or []
        return f", {len(curve) - 1} epochs, final test acc under G {100 * curve[-1]:.1f}%" if len(curve) > 1 else ""
    last = history[-1]
    acc = next(
        (
            (label, last[k])
            for k, label in (("val_acc", "val acc"), ("test_acc", "test acc"), ("train_acc", "train acc"))
            if isinstance(last.get(k), (int, float))
        ),
        None,
    )
    return f", {len(history)} epochs" + (f", final {acc[0]} {100 * acc[1]:.1f}%" if acc else "")


def runs() -> list[dict]:
    """Every model trained or loaded since the store was opened: name, training seconds, loaded, device."""
    return list(_RUNS)


def rebuilt() -> list[dict]:
    """Every store entry found damaged since the store was opened (and computed again): path, why."""
    return list(_REBUILT)


# --------------------------------------------------------------------------------------------------
# Evaluations


@functools.cache
def _evaluation_code(module_files: tuple[str, ...]) -> str:
    h = hashlib.sha256()
    _hash_files(h, EVALUATION_FILES + module_files)
    return h.hexdigest()


def _lib_files(parts) -> tuple[str, ...]:
    """The source files of the project's functions among ``parts`` (an attack defined in a method
    module may call anything in that module)."""
    files = set()
    for part in parts:
        func = part.func if isinstance(part, functools.partial) else part
        module = getattr(func, "__module__", "") or ""
        if isinstance(func, types.FunctionType) and module.startswith("lib.") and inspect.getsourcefile(func):
            files.add(str(Path(inspect.getsourcefile(func)).resolve().relative_to(REPO_ROOT)))
    return tuple(sorted(files))


_MODULE_DIGESTS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _module_digest(module: nn.Module) -> str:
    """A module's fingerprint, recomputed only when one of its tensors changed (in place or swapped)."""
    signature = tuple((t.data_ptr(), t._version) for t in module.state_dict(keep_vars=True).values())
    known = _MODULE_DIGESTS.get(module)
    if known is None or known[0] != signature:
        fp = _Fingerprint()
        fp.add(module)
        known = _MODULE_DIGESTS[module] = (signature, fp.hexdigest())
    return known[1]


def evaluation_key(kind: str, parts: tuple) -> str:
    """The key of an evaluation: its kind, the models (by weights), inputs, attack and parameters
    in ``parts``, the evaluation code, the device kind, the dry-run cuts and the random state."""
    from lib.runtime import DryRun, device

    fp = _Fingerprint()
    fp.text(f"format:{FORMAT}:{kind}:{_evaluation_code(_lib_files(parts))}:{device().type}")
    fp.add([DryRun.on, DryRun.iterations_cap, DryRun.examples_cap])
    fp.add([_module_digest(p) if isinstance(p, nn.Module) else p for p in parts])
    fp.add(random_state())
    return fp.hexdigest()[:24]


def remembered(kind: str, compute: Callable[[], object], *parts) -> object:
    """``compute()`` (a tensor or JSON-able numbers), or what it returned in an earlier run.

    ``parts``: everything the result depends on (models, tensors, the attack, its parameters).
    The entry keeps the random state after ``compute``; loading it restores that state, so a run
    from the store continues exactly as the run that computed. Without a store, or with
    ``retrain``, it always computes (and with ``retrain`` overwrites the entry).
    """
    st = store()
    if st.root is None:
        return compute()
    path = st.evaluations / f"{kind}-{evaluation_key(kind, parts)}.pt"
    if path.exists() and not st.retrain:
        before = random_state()
        try:
            blob = _read_entry(path, ("value", "random_state"), "rerun the stage")
            set_random_state(blob["random_state"])
            return blob["value"]
        except _DAMAGE as err:
            set_random_state(before)
            _damaged(path, err)
    value = compute()
    _write_entry(path, {"value": value, "random_state": random_state()})
    return value
