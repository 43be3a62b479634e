"""What every paper notebook does around its method: validate, seed, style, write, describe."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from types import ModuleType

import pandas as pd
from IPython import get_ipython
from IPython.display import Markdown, display

from lib import cache, stages
from lib import claims as C
from lib.cache import log, open_store
from lib.claims import Claim
from lib.params import RUN_SETTINGS, build_config, check_profile, check_seed, checked_parameters, method_params
from lib.report import ResultsWriter, markdown_table, metric_prefix, set_style, setting_line
from lib.runtime import Acceleration, DryRun, device_name, metadata, repo_path, seed_everything
from lib.train_units import training_threads
from lib.units import PlanDrift, Threads

PENDING = "*The verdicts of this run appear here when it finishes.*"


class StageRun:
    """One execution of a stage's notebook: results writer, seed, figure style, metadata."""

    def __init__(
        self,
        stage: ModuleType,
        profile: str,
        settings: dict,
        results_dir: str | Path,
        models_dir: str | Path | None = None,
        dry_run: bool = False,
    ):
        """``stage``: the stage module (its ``Config``); ``settings``: its checked parameters as lib.pipeline
        injects them; empty (a notebook run by hand or by nbval), the values profiles/<stage>.yaml sets for
        ``profile``. Builds ``self.cfg``."""
        module, stage = stage, stage.__name__.rpartition(".")[2]
        check_profile(profile)
        params = {**settings, "profile": profile} if settings else checked_parameters(stage, profile)
        seed, retrain = check_seed(params["seed"]), params["retrain"]
        Acceleration.configure(profile, params["deterministic"])
        DryRun.configure(dry_run)
        self.cfg, self.settings = build_config(module.Config, params), params
        self.models = open_store(repo_path(models_dir) if models_dir is not None else None, retrain)
        self.plan = module.plan(self.cfg)  # the run is held to its plan's units (checked in write_claims)
        Threads.count = training_threads(profile)  # a unit trained here comes out as a worker's would
        cache.on_train(self._only_units)
        self.stage, self.profile, self.seed = stage, profile, seed
        self.started = time.time()
        seed_everything(seed)
        set_style()
        self.out = ResultsWriter(repo_path(results_dir), metric_prefix(stage))
        stored = (
            "no model store"
            if models_dir is None
            else f"models in {models_dir}" + (" (retrain: store ignored)" if retrain else "")
        )
        # the DRY RUN warning first: log() wraps long lines between words, and must not split it
        dry = "DRY RUN: synthetic data, every loop cut short, numbers meaningless. " if dry_run else ""
        log(f"{dry}Profile '{profile}' on {device_name()}; {stored}")
        self._meta: dict = {}
        self._summary = display(Markdown(PENDING), display_id=True) if get_ipython() is not None else None

    def _only_units(self, name: str) -> None:
        """Every model of the run is a unit of its plan: one trained or loaded outside a unit stops the run."""
        if not cache.in_unit():
            raise PlanDrift(f"{self.stage} trains '{name}' outside the units of its plan(cfg): obtain it as a unit")

    def check_complete(self) -> None:
        """The run obtained every unit its plan lists."""
        missing = [m.name for m in self.plan.models if m.name not in cache.units_obtained()]
        if missing:
            raise PlanDrift(f"{self.stage}'s plan(cfg) lists units the run did not obtain: {', '.join(missing)}")

    @contextmanager
    def folded_log(self) -> Iterator[None]:
        """The lines printed inside (each model loaded or trained, each evaluation) shown folded under a one-line
        count, so that the page reads as results and the log is one click away."""
        buffer = io.StringIO()
        try:
            with redirect_stdout(buffer):
                yield
        finally:
            display(Markdown(folded(buffer.getvalue())))

    def meta(self, dataset: str, samples: dict) -> dict:
        """The metadata block (profile, dataset, samples, seed, device, torch, commit, wall time)."""
        self._meta = metadata(self.profile, dataset, samples, self.seed, self.started)
        return self._meta

    def subtitle(self, dataset: str) -> str:
        """A figure subtitle naming the profile and whether the run is reduced."""
        tag = "DRY RUN" if DryRun.on else "paper setting" if self.profile == "paper" else "REDUCED"
        return f"{dataset}; profile {self.profile}, {tag}"

    def configuration(self, per_row: int = 3) -> Markdown:
        """The effective configuration of this run as one compact Markdown table (``per_row`` parameter | value
        pairs a row; a raw DataFrame would render as an HTML dump)."""
        return Markdown(markdown_table(self.configuration_table(per_row)))

    def configuration_table(self, per_row: int = 3) -> pd.DataFrame:
        """The rows of :meth:`configuration`."""
        items = [("profile", self.profile), *sorted(method_params(self.settings).items())]
        items += [(k, self.settings[k]) for k in RUN_SETTINGS]
        items = [(k, "null" if v is None else str(v)) for k, v in items]  # as profiles/<stage>.yaml writes them
        rows = [items[i : i + per_row] for i in range(0, len(items), per_row)]
        return pd.DataFrame(
            [
                {f"{h} {j + 1}": v for j, pair in enumerate(row) for h, v in zip(("parameter", "value"), pair)}
                for row in rows
            ]
        ).fillna("")

    def write_claims(self, claims: Sequence[Claim]) -> Markdown:
        """Store the verdicts (``claims.json``, ``claims.md``), add their counts to ``metrics.json``
        and show them in the summary at the notebook's top (the cell :class:`StageRun` displayed);
        returns a pointer to it for the last cell. First, the run must have trained every model its plan lists."""
        self.check_complete()
        C.write(claims, self.out.root)
        self.out.add_metrics(C.counts(claims))
        records = [c.to_json() for c in claims]
        n = C.counts(claims)
        total = ", ".join(f"{n['claims_' + v.replace(' ', '_')]} {v}" for v in C.VERDICTS)
        summary = "\n\n".join(
            part
            for part in [
                "## Verdicts of this run",
                f"**Paper:** {stages.get(self.stage).paper}" if self.stage in stages.STAGES else "",
                setting_line(self._meta),
                f"**Answer:** {C.answer_line(records)}",
                C.summary_table(claims),
                f"{len(claims)} claims: {total}. *The answer's rule, the margins' reasons and every gate: "
                "`claims.md`; the method, the choices where the paper is silent, tables and figures follow.*",
            ]
            if part
        )
        if self._summary is not None:
            self._summary.update(Markdown(summary))
        return Markdown(
            "*The verdicts are stored in `claims.md` (every gate, the margins' reasons) and `claims.json`; "
            "the summary at the top shows them.*"
        )


def folded(log_text: str) -> str:
    """A run's log as a folded Markdown block: what it did in one line (models loaded from the store, trained,
    evaluations run or loaded), the lines behind a click."""
    lines = log_text.splitlines()
    loaded = sum(": loaded" in line for line in lines)
    trained = sum(": trained in" in line for line in lines)
    evaluated = sum("evaluated in" in line for line in lines)
    counts = f"{loaded} models loaded from the store, {trained} trained, {evaluated} evaluations"
    body = "\n".join(lines) or "(nothing printed)"
    return f"<details><summary>Run log: {counts} (click to show)</summary>\n\n```text\n{body}\n```\n\n</details>"
