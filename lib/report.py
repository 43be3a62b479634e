"""Paper-vs-ours tables, one figure style, atomic writes into ``results/<stage>/``."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from lib.cache import runs  # noqa: E402
from lib.runtime import attack_libraries  # noqa: E402

PALETTE = "colorblind"


def set_style() -> None:
    """The one figure style of the repository."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "savefig.bbox": "tight"})


def _atomic_write(path: Path, write) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    os.replace(tmp, path)
    return path


def comparison(rows: Iterable[dict], keys: list[str]) -> pd.DataFrame:
    """Long paper-vs-ours table: ``keys`` + metric, paper, ours, delta (= ours - paper).

    Each row is a dict with the ``keys``, ``metric``, ``paper`` (None where the paper has no
    value) and ``ours``.
    """
    df = pd.DataFrame(list(rows), columns=[*keys, "metric", "paper", "ours"])
    df["paper"] = pd.to_numeric(df["paper"], errors="coerce")
    df["ours"] = pd.to_numeric(df["ours"], errors="coerce")
    df["delta"] = df["ours"] - df["paper"]
    return df


def widen(long: pd.DataFrame, index: list[str]) -> pd.DataFrame:
    """Wide layout: one row per ``index``, columns '<metric> paper|ours|delta' in metric order."""
    metrics = list(dict.fromkeys(long["metric"]))
    wide = long.pivot_table(index=index, columns="metric", values=["paper", "ours", "delta"], sort=False, dropna=False)
    cols = [(v, m) for m in metrics for v in ("paper", "ours", "delta")]
    wide = wide.reindex(columns=pd.MultiIndex.from_tuples(cols))
    wide.columns = [f"{m} {v}" for v, m in cols]
    order = list(dict.fromkeys(map(tuple, long[index].values.tolist())))
    return wide.reindex(pd.MultiIndex.from_tuples(order, names=index) if len(index) > 1 else [o[0] for o in order]).reset_index()


def setting_line(meta: dict) -> str:
    """One line naming how a table was produced: profile, dataset, samples, device, torch."""
    samples = ", ".join(f"{k} {v}" for k, v in meta.get("samples", {}).items())
    reduced = "REDUCED run, not the paper's setting" if meta.get("reduced") else "paper setting"
    return (
        f"Profile `{meta.get('profile')}` ({reduced}); dataset {meta.get('dataset')}; samples: {samples}; "
        f"seed {meta.get('seed')}; device {meta.get('device')}; torch {meta.get('torch')}."
    )


def _fmt(v) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


class ResultsWriter:
    """Writes one stage's figures, tables and metrics under ``root`` atomically."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        (self.root / "figures").mkdir(parents=True, exist_ok=True)
        (self.root / "tables").mkdir(parents=True, exist_ok=True)

    def table(self, name: str, df: pd.DataFrame, caption: str, meta: dict | None = None) -> pd.DataFrame:
        """Write ``tables/<name>.csv`` and ``.md`` (caption and setting line above the table)."""
        _atomic_write(self.root / "tables" / f"{name}.csv", lambda p: df.to_csv(p, index=False, float_format="%.6g"))
        head = f"**{caption}**\n\n" + (f"{setting_line(meta)}\n\n" if meta else "")
        text = head + df.map(_fmt).to_markdown(index=False) + "\n"
        _atomic_write(self.root / "tables" / f"{name}.md", lambda p: p.write_text(text))
        return df

    def figure(self, name: str, fig: plt.Figure) -> Path:
        """Save ``figures/<name>.png`` and close the figure."""
        path = _atomic_write(self.root / "figures" / f"{name}.png", lambda p: fig.savefig(p, format="png"))
        plt.close(fig)
        return path

    def metrics(self, metrics: dict, meta: dict) -> dict:
        """Write ``metrics.json`` = {"meta": meta + attack libraries used, **metrics} (NaN as null),
        and ``training.json``: every model the run trained or loaded, with its training wall time."""
        blob = {"meta": {**meta, "attack_libraries": attack_libraries()}, **metrics}
        text = json.dumps(_clean(blob), indent=2, sort_keys=False) + "\n"
        _atomic_write(self.root / "metrics.json", lambda p: p.write_text(text))
        models = json.dumps({"models": runs()}, indent=2) + "\n"  # the pipeline adds the plan and the total
        _atomic_write(self.root / "training.json", lambda p: p.write_text(models))
        return blob


def _clean(obj):
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
