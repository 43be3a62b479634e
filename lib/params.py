"""params.yaml: one ``profile`` switch and per-stage overrides; profiles/<stage>.yaml: each
stage's ``common`` block and one block per profile.

A stage's effective parameters are its ``common`` block overlaid with the active profile's block
(both in ``profiles/<stage>.yaml``, a DVC dependency of the stage), then with its section of
params.yaml (empty on main; ``dvc exp run -S +p3_single_step_reuse.epochs=20`` sets one value for
an experiment). ``dvc exp run -S profile=paper`` switches every stage at once. params.yaml stays
a handful of values, so ``dvc exp show`` and ``dvc params diff`` show what an experiment changed.

The contract: a stage's effective parameters must equal, key for key, the parameters its
notebook declares in its ``parameters`` cell (``name: type = smoke default``), with values of
the declared types. :func:`check_parameters` enforces it before any kernel starts, so a
mistyped key, a missing key or a wrong type is one :class:`ConfigError`, never a silent run on
the notebook's smoke default.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import yaml

from lib import stages
from lib.errors import ConfigError, require
from lib.runtime import REPO_ROOT, repo_relative

PROFILES = ("smoke", "cpu", "paper")
PARAMS_FILE = REPO_ROOT / "params.yaml"
PROFILES_DIR = "profiles"  # beside the parameters file: profiles/<stage>.yaml
# The notebook's parameters cell: what lib.pipeline injects (``settings``: the checked parameters), not params.yaml
INJECTED = ("profile", "settings", "results_dir", "data_dir", "models_dir", "dry_run")
NOT_PARAMETERS = ("profile", "max_batches")  # fields of a stage's Config that no profile sets (the switch; tests' cap)
_BASES = {"int", "float", "str", "bool", "list", "dict", "None"}


def check_profile(profile: str) -> str:
    """Return ``profile`` if known, else raise a clear error."""
    require(profile != "", f"empty profile; choose one of {', '.join(PROFILES)}")
    require(profile in PROFILES, f"unknown profile '{profile}'; choose one of {', '.join(PROFILES)}")
    return profile


def check_seed(seed: object) -> int:
    """Return ``seed`` if numpy, torch and python can all take it, else raise a clear error."""
    require(
        isinstance(seed, int) and not isinstance(seed, bool) and 0 <= seed < 2**32,
        f"seed must be an integer in [0, 2**32 - 1], got {seed!r}",
    )
    return seed


class _DuplicateKey(Exception):
    def __init__(self, key: object, first: int, second: int):
        super().__init__(f"sets '{key}' twice in one block (lines {first} and {second}); keep one")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key set twice in one mapping (plain YAML keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            lines: dict = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if key in lines:
                    raise _DuplicateKey(key, lines[key], line)
                lines[key] = line
        return super().construct_mapping(node, deep)


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML error in one line, with its line and column, without the file's path."""
    if isinstance(err, yaml.MarkedYAMLError) and err.problem_mark is not None:
        mark = err.problem_mark
        context = f"{err.context}, " if err.context else ""
        return f"{context}{err.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(err).split())


def _read_yaml(path: Path | str, what: str) -> dict:
    rel = repo_relative(path)
    try:
        with open(path) as f:
            data = yaml.load(f, Loader=_UniqueKeyLoader)
    except OSError as err:
        raise ConfigError(f"cannot read {what} {rel}: {err.strerror.lower() if err.strerror else err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot read {what} {rel}: {_yaml_problem(err)}") from None
    except _DuplicateKey as err:
        raise ConfigError(f"{what} {rel} {err}") from None
    data = {} if data is None else data
    require(isinstance(data, dict), f"{what} {rel} must be a mapping")
    return data


def read_params(path: Path | str = PARAMS_FILE) -> dict:
    """The whole params.yaml as a dict."""
    return _read_yaml(path, "parameters file")


def profiles_file(stage: str, params_file: Path | str = PARAMS_FILE) -> Path:
    """``profiles/<stage>.yaml`` beside the parameters file."""
    return Path(params_file).parent / PROFILES_DIR / f"{stage}.yaml"


def _origins(
    stage: str, profile: str | None, path: Path | str
) -> tuple[str, dict[str, object], dict[str, tuple[str, str]]]:
    """(profile, effective parameters, key -> where it was set: ('stage.cpu.key', 'profiles/stage.yaml'))."""
    params = read_params(path)
    if profile is None:
        require(
            params.get("profile") is not None,
            f"{repo_relative(path)} sets no profile; add a line 'profile: cpu' "
            f"(one of {', '.join(PROFILES)}) or pass --profile",
        )
        profile = params["profile"]
    profile = check_profile(profile)
    source = profiles_file(stage, path)
    if not source.exists():
        known = sorted(p.stem for p in source.parent.glob("*.yaml"))
        near = difflib.get_close_matches(stage, known, n=1)
        raise ConfigError(
            f"no profiles file {repo_relative(source)} for stage '{stage}'"
            + (f" (did you mean '{near[0]}'?)" if near else "")
        )
    section = _read_yaml(source, "profiles file")
    rel = repo_relative(source)
    require(profile in section, f"{rel} has no '{profile}' block")
    overrides = params.get(stage) or {}
    require(
        isinstance(overrides, dict),
        f"section '{stage}' of {repo_relative(path)} must be a mapping of parameters (overrides)",
    )
    merged, origin = {}, {}
    for block in ("common", profile):
        values = section.get(block) or {}
        require(isinstance(values, dict), f"block '{block}' of {rel} must be a mapping of parameters")
        merged.update(values)
        origin.update({k: (f"{stage}.{block}.{k}", rel) for k in values})
    merged.update(overrides)
    origin.update({k: (f"{stage}.{k}", repo_relative(path)) for k in overrides})
    return profile, merged, origin


def load_stage_params(stage: str, profile: str | None = None, path: Path | str = PARAMS_FILE) -> dict:
    """Effective parameters of ``stage`` for ``profile`` (default: the file's ``profile`` switch)."""
    profile, merged, _ = _origins(stage, profile, path)
    merged["profile"] = profile
    return merged


def method_params(params: dict) -> dict:
    """``params`` without the run's own settings (profile, paths, model store, determinism):
    what a stage's ``Config`` takes."""
    return {k: v for k, v in params.items() if k not in (*INJECTED, *RUN_SETTINGS)}


# --- the stage's declaration: its Config ------------------------------------------------------


def notebook_path(stage: str) -> Path:
    """The notebook behind ``stage``; clear error if the stage or its notebook is unknown."""
    path = stages.get(stage).notebook
    require(path.exists(), f"stage '{stage}' has no notebook {repo_relative(path)}")
    return path


@dataclass(frozen=True)
class Declared:
    """One declared parameter: its type annotation (as written) and its default."""

    annotation: str
    default: object


# params.yaml keys that configure the run (lib.notebook.StageRun), not the method: declared once, here
RUN_SETTINGS = {"retrain": Declared("bool", False), "deterministic": Declared("bool | None", None)}


def _default(f: dataclasses.Field) -> object:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def declared_parameters(stage: str) -> dict[str, Declared]:
    """The parameters ``stage`` declares: the fields of its ``Config`` (name, type, the paper's default), and
    the run settings every stage takes."""
    fields = {f.name: Declared(_type_text(f.type), _default(f)) for f in dataclasses.fields(config_class(stage))}
    for d in fields.values():
        _parse_type(d.annotation)
    return {**{k: v for k, v in fields.items() if k not in NOT_PARAMETERS}, **RUN_SETTINGS}


def _type_text(annotation: object) -> str:
    return annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))


def declared_by(stage: str) -> str:
    """Where ``stage``'s parameters are declared, for messages."""
    module = stages.get(stage).module
    return f"the Config of {module.replace('.', '/')}.py"


def checked_parameters(stage: str, profile: str | None, params_file: Path | str = PARAMS_FILE) -> dict:
    """``stage``'s effective parameters under ``profile``, checked against its ``Config``."""
    return check_parameters(stage, profile, declared_parameters(stage), declared_by(stage), params_file)


def build_config(config: type, params: dict, **override: object):
    """A stage's ``config`` (its ``Config`` class) from its checked parameters (and ``override``), validated."""
    return config(**{**method_params(params), **override}, profile=params["profile"]).validate()


def config_class(stage: str) -> type:
    """The ``Config`` of the registered ``stage``."""
    return stages.get(stage).load().Config


def stage_config(stage: str, profile: str, **override: object):
    """``stage``'s validated ``Config`` for ``profile`` as profiles/<stage>.yaml sets it (and ``override``)."""
    return build_config(config_class(stage), checked_parameters(stage, profile), **override)


def notebook_parameters(notebook: Path) -> dict[str, Declared]:
    """The ``name: type = default`` assignments of a notebook's cell tagged ``parameters``."""
    try:
        nb = json.loads(Path(notebook).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"cannot read notebook {notebook}: {err}") from None
    cells = [c for c in nb.get("cells", []) if "parameters" in c.get("metadata", {}).get("tags", [])]
    require(len(cells) == 1, f"{Path(notebook).name} needs exactly one cell tagged 'parameters', has {len(cells)}")
    declared = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        require(
            isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None,
            f"{Path(notebook).name}: every line of the parameters cell must read 'name: type = default'",
        )
        annotation = ast.unparse(node.annotation)
        _parse_type(annotation)
        declared[node.target.id] = Declared(annotation, ast.literal_eval(node.value))
    return declared


def _parse_type(annotation: str) -> ast.expr:
    try:
        tree = ast.parse(annotation, mode="eval").body
    except SyntaxError:
        raise ConfigError(f"cannot read the parameter type '{annotation}'") from None
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | {
        "None" for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value is None
    }
    require(names <= _BASES, f"parameter type '{annotation}' may only use {', '.join(sorted(_BASES))}")
    return tree


def conforms(value: object, annotation: str) -> bool:
    """Whether ``value`` (as YAML gives it) is of the declared type: int, float (finite; an int
    is a float), str, bool, None, list[T], dict[str, T], and unions with ``|``."""
    return _conforms(value, _parse_type(annotation))


def _conforms(value: object, node: ast.expr) -> bool:
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _conforms(value, node.left) or _conforms(value, node.right)
    if isinstance(node, ast.Constant) and node.value is None:
        return value is None
    if isinstance(node, ast.Subscript):
        base, args = node.value.id, node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if base == "list":
            return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
        return isinstance(value, dict) and all(isinstance(k, str) and _conforms(v, args[-1]) for k, v in value.items())
    name = node.id
    if name == "None":
        return value is None
    if name == "bool":
        return isinstance(value, bool)
    if name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    return isinstance(value, {"str": str, "list": list, "dict": dict}[name])


def _shown(value: object) -> str:
    hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) and _looks_numeric(value) else ""
    return f"{value!r} ({type(value).__name__}){hint}"


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_parameters(
    stage: str, profile: str | None, declared: dict[str, Declared], declared_by: str, path: Path | str = PARAMS_FILE
) -> dict:
    """The effective parameters of ``stage``, checked against ``declared`` (by ``declared_by``).

    Unknown keys (with the closest declared name), missing keys and values of the wrong type
    are reported together in one :class:`ConfigError`.
    """
    profile, merged, origin = _origins(stage, profile, path)
    settable = [k for k in declared if k not in INJECTED]
    problems = []
    for key in merged:
        if key not in settable:
            near = difflib.get_close_matches(str(key), settable, n=1)
            why = "is set by the pipeline" if key in INJECTED else "is not a parameter"
            problems.append(
                f"unknown key {origin[key][0]} in {origin[key][1]} ({why}"
                + (f"; did you mean {near[0]}?)" if near else ")")
            )
    for key in settable:
        if key not in merged:
            problems.append(
                f"missing key {key} (set it in the common or {profile} block of {repo_relative(profiles_file(stage, path))})"
            )
        elif not conforms(merged[key], declared[key].annotation):
            problems.append(
                f"{origin[key][0]} must be {declared[key].annotation}, got {_shown(merged[key])} (set in {origin[key][1]})"
            )
    require(
        not problems,
        f"the parameters of {stage} do not match {declared_by} (profile {profile}): " + "; ".join(problems),
    )
    merged["profile"] = profile
    return merged


def params_hash(params: dict) -> str:
    """SHA-256 (first 16 hex digits) of a stage's effective parameters, machine paths left out."""
    kept = {k: v for k, v in params.items() if k not in ("results_dir", "data_dir", "models_dir")}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()[:16]
