"""Paper-vs-ours tables, one figure style, atomic writes into ``results/<stage>/``."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from lib import intervals as I  # noqa: E402
from lib.cache import log, rebuilt, runs  # noqa: E402
from lib.errors import require  # noqa: E402
from lib.runtime import attack_libraries  # noqa: E402

# Okabe & Ito's eight colours (distinct under every common colour-vision deficiency; seaborn's
# "colorblind" repeats a pink at its 5th and 7th colours, which compare's eight defences reach)
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442"]
MAX_HEADLINE = (
    20  # a stage's own numbers in metrics.json (besides its claims' counts): a dvc metrics show row stays readable
)


def _check_headline(headline: dict, new: dict) -> None:
    """``new`` flat numbers; ``headline`` at most ``MAX_HEADLINE`` of the stage's own (the claims' counts,
    ``claims_*``, come on top)."""
    bad = [k for k, v in new.items() if isinstance(v, bool) or not isinstance(v, (int, float))]
    require(not bad, f"headline metrics must be flat numbers; not numbers: {', '.join(bad)}")
    own = [k for k in headline if not _bare(k).startswith("claims_")]
    require(
        len(own) <= MAX_HEADLINE, f"{len(own)} headline metrics; keep at most {MAX_HEADLINE} (the rest go to details)"
    )


def _bare(name: str) -> str:
    """A metric's name without its stage prefix (``p3.claims_held`` -> ``claims_held``)."""
    return name.rpartition(".")[2]


def metric_prefix(stage: str) -> str:
    """The prefix of ``stage``'s metric names in ``metrics.json`` (``p3_single_step_reuse`` -> ``p3.``): names
    unique across stages, so ``dvc exp show`` and ``dvc metrics diff`` label a column with it alone."""
    return stage.split("_")[0] + "."


def legend_outside(ax, fontsize: float = 7, title: str | None = None) -> None:
    """The legend to the right of ``ax``, off the data; ``title``: a note above its entries (e.g. :data:`ERROR_BARS`)."""
    ax.legend(
        loc="upper left",
        bbox_to_anchor=(1.01, 1.0),
        borderaxespad=0.0,
        fontsize=fontsize,
        title=title,
        title_fontsize=fontsize,
        alignment="left",
    )


ERROR_BARS = "error bars: 95% interval over\nthe test images (exact binomial)"


def accuracy_curve(ax, x: Iterable[float], fractions: Iterable[float], n_images: int, **style):
    """Accuracies (fractions of ``n_images`` test images) drawn in % with their 95% exact binomial interval
    as error bars (:data:`ERROR_BARS`); returns matplotlib's container (``.lines[0]`` is the line)."""
    cis = [I.measured_accuracy(f, n_images) for f in fractions]
    y = np.array([c.estimate for c in cis])
    err = np.nan_to_num([y - [c.low for c in cis], [c.high for c in cis] - y])
    return ax.errorbar(list(x), y, yerr=err, capsize=2, elinewidth=0.8, **style)


def set_style() -> None:
    """The one figure style of the repository."""
    sns.set_theme(context="paper", style="whitegrid", palette=PALETTE, font_scale=1.1)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 130, "savefig.bbox": "tight"})


@contextmanager
def evaluation(label: str) -> Iterator[None]:
    """One line when an evaluation block ends: what was evaluated and its wall time (the notebook's
    progress report in place of progress bars)."""
    t0 = time.perf_counter()
    yield
    log(f"{label}: evaluated in {time.perf_counter() - t0:.0f} s")


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
    return wide.reindex(
        pd.MultiIndex.from_tuples(order, names=index) if len(index) > 1 else [o[0] for o in order]
    ).reset_index()


def setting_line(meta: dict) -> str:
    """One line naming how a table was produced: profile, dataset, samples, device, torch."""
    samples = ", ".join(f"{k} {v}" for k, v in meta.get("samples", {}).items())
    reduced = "REDUCED run, not the paper's setting" if meta.get("reduced") else "paper setting"
    return (
        f"Profile `{meta.get('profile')}` ({reduced}); dataset {meta.get('dataset')}; samples: {samples}; "
        f"seed {meta.get('seed')}; device {meta.get('device')}; torch {meta.get('torch')}."
    )


# --------------------------------------------------------------------------------------------------
# Displayed tables: the paper's precision, signed deltas, no index, no horizontal scroll bar

SIGNED = ("delta", "gap", "gain", "change", "Δ")  # column names holding differences: shown with a sign
GROUP = (" paper", " ours", " delta")  # a wide paper-vs-ours table's column triplets
WIDTH_CHARS = 120  # what fits a 1,300 px window at the notebook's table font, in characters


def printed_decimals(values: Iterable) -> int:
    """How many decimals the paper prints: the most among ``values`` (1 when none, at most 3); a value
    scaled to percent keeps the paper's decimals (100 x 0.2934 is 29.340000000000003 in floats)."""
    places = [
        len(repr(round(float(v), 6)).split(".")[1].rstrip("0"))
        for v in values
        if isinstance(v, (int, float)) and math.isfinite(v)
    ]
    return min(max(places, default=1), 3) or 1


def magnitude_decimals(values: Iterable) -> int:
    """Decimals for numbers of this size: 1 from 10 up, 2 from 1 up, 3 significant digits (at most 4
    decimals) below 1; the largest finite value decides, so a column shares one precision."""
    size = max((abs(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)), default=0.0)
    return 1 if size >= 10 or size == 0 else 2 if size >= 1 else min(4, 2 - math.floor(math.log10(size)))


def format_number(v, decimals: int | None = None, signed: bool = False) -> str:
    """One number for display: ``decimals`` fixed (default: by its magnitude); integers as integers
    unless decimals are given; nan as blank; a sign when ``signed``."""
    if v is None or isinstance(v, bool) or not isinstance(v, (int, float)):
        return "" if v is None else str(v)
    if not math.isfinite(v):
        return "" if math.isnan(v) else str(v)
    if decimals is None:
        if float(v).is_integer() and not signed:
            return f"{int(v)}"
        decimals = magnitude_decimals([v])
    return f"{v:{'+' if signed else ''}.{decimals}f}"


def _metric(col: str) -> str:
    """The metric a paper / ours / delta column belongs to (the column itself otherwise)."""
    return next((col[: -len(g)] for g in GROUP if col.endswith(g)), col)


def _formatters(df: pd.DataFrame) -> dict[str, Callable[[object], str]]:
    """Per column: the paper-vs-ours triplets at the paper's precision, the rest by magnitude."""
    out = {}
    for col in df.columns:
        paper = f"{_metric(col)} paper" if col.endswith(GROUP) else None
        signed = any(s in col.lower() for s in SIGNED)
        numeric = pd.api.types.is_numeric_dtype(df[col]) and not pd.api.types.is_bool_dtype(df[col])
        integral = numeric and not signed and all(float(v).is_integer() for v in df[col].dropna())
        if paper in df.columns and df[paper].notna().any():
            decimals = printed_decimals(df[paper])
        elif paper in df.columns:  # no paper value in this metric: its ours / delta by the magnitude of ours
            decimals = magnitude_decimals(df.get(f"{_metric(col)} ours", df[col]).tolist())
        elif numeric and not integral:
            decimals = magnitude_decimals(df[col].tolist())
        else:
            decimals = None
        out[col] = lambda v, d=decimals, s=signed, i=integral: format_number(
            int(v) if i and isinstance(v, float) and math.isfinite(v) else v, d, s
        )
    return out


LONG = ("paper", "ours", "delta")  # a long paper-vs-ours table: one metric per row


def formatted(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as strings, every number at its display precision (the CSV files keep full precision).
    A long table's paper / ours / delta take each row's paper precision (rows hold different metrics)."""
    fmt = _formatters(df)
    out = pd.DataFrame({c: [fmt[c](v) for v in df[c].tolist()] for c in df.columns}, columns=df.columns)
    if set(LONG) <= set(df.columns):
        for i, (paper, *values) in enumerate(df[list(LONG)].itertuples(index=False)):
            if isinstance(paper, (int, float)) and math.isfinite(paper):
                d = printed_decimals([paper])
                out.iloc[i, [df.columns.get_loc(c) for c in LONG]] = [
                    format_number(v, d, c == "delta") for c, v in zip(LONG, (paper, *values))
                ]
    return out


def _width(strings: pd.Series, header: str) -> int:
    """A column's rendered width in characters: its longest value or its header's longest word."""
    return max([len(s) for s in strings] + [len(w) for w in str(header).split()] + [1]) + 3


def column_parts(data: pd.DataFrame, text: pd.DataFrame, width: int = WIDTH_CHARS) -> list[list[str]]:
    """Split a wide table's columns into parts that each fit ``width`` characters: the leading
    non-numeric columns of ``data`` (the row keys) repeat in every part; paper / ours / delta
    triplets stay together. ``text``: ``data`` formatted for display."""
    cols = list(text.columns)
    keys = []
    for c in cols:
        if c.endswith(GROUP) or pd.api.types.is_numeric_dtype(data[c]):
            break
        keys.append(c)
    groups: list[list[str]] = []
    for c in cols[len(keys) :]:
        if groups and _metric(groups[-1][0]) == _metric(c):
            groups[-1].append(c)
        else:
            groups.append([c])
    key_width = sum(_width(text[c], c) for c in keys)
    parts, current, used = [], [], key_width
    for g in groups:
        w = sum(_width(text[c], c) for c in g)
        if current and used + w > width:
            parts.append(keys + current)
            current, used = [], key_width
        current += g
        used += w
    return parts + [keys + current] if current or not parts else parts


def markdown_table(data: pd.DataFrame, text: pd.DataFrame | None = None) -> str:
    """``data`` as a Markdown table at display precision (``text``: already formatted), numbers
    right-aligned and printed exactly as formatted (tabulate would re-parse them)."""
    text = formatted(data) if text is None else text
    align = tuple("right" if pd.api.types.is_numeric_dtype(data[c]) else "left" for c in data.columns)
    escaped = text.rename(columns=_escape_pipes).map(_escape_pipes)  # a bare "|" would end the cell
    return escaped.to_markdown(index=False, disable_numparse=True, colalign=align)


def _escape_pipes(cell: object) -> object:
    return cell.replace("|", "\\|") if isinstance(cell, str) else cell


class Table:
    """A written table as the notebook shows it: caption, then Markdown at display precision, split
    into parts when too wide for the page. ``data`` is the full-precision DataFrame."""

    def __init__(self, data: pd.DataFrame, caption: str = ""):
        self.data, self.caption = data, caption

    def markdown(self, width: int = WIDTH_CHARS) -> str:
        text = formatted(self.data)
        parts = column_parts(self.data, text, width)
        tables = [markdown_table(self.data[cols], text[cols]) for cols in parts]
        head = f"**{self.caption}**\n\n" if self.caption else ""
        if len(tables) > 1:
            tables = [f"*Part {i} of {len(tables)}*\n\n{t}" for i, t in enumerate(tables, 1)]
        return head + "\n\n".join(tables)

    def _repr_markdown_(self) -> str:
        return self.markdown()

    def __repr__(self) -> str:
        return f"{self.caption}\n{formatted(self.data).to_string(index=False)}"


class ResultsWriter:
    """Writes one stage's figures, tables and metrics under ``root`` atomically; ``prefix`` starts every
    metric name in ``metrics.json`` (:func:`metric_prefix`)."""

    def __init__(self, root: Path | str, prefix: str = ""):
        self.root, self.prefix = Path(root), prefix
        (self.root / "figures").mkdir(parents=True, exist_ok=True)
        (self.root / "tables").mkdir(parents=True, exist_ok=True)

    def table(self, name: str, df: pd.DataFrame, caption: str, meta: dict | None = None) -> Table:
        """Write ``tables/<name>.csv`` (full precision) and ``.md`` (caption, setting line, display
        precision); return the :class:`Table` the notebook displays."""
        _atomic_write(self.root / "tables" / f"{name}.csv", lambda p: df.to_csv(p, index=False, float_format="%.6g"))
        head = f"**{caption}**\n\n" + (f"{setting_line(meta)}\n\n" if meta else "")
        text = head + markdown_table(df) + "\n"
        _atomic_write(self.root / "tables" / f"{name}.md", lambda p: p.write_text(text))
        return Table(df, caption)

    def plot_data(self, name: str, df: pd.DataFrame) -> Path:
        """Write ``tables/<name>.csv``: the data of a DVC plot (``lib.stages.Plot``), full precision."""
        return _atomic_write(
            self.root / "tables" / f"{name}.csv", lambda p: df.to_csv(p, index=False, float_format="%.6g")
        )

    def figure(self, name: str, fig: plt.Figure) -> Path:
        """Save ``figures/<name>.png`` and close the figure."""
        path = _atomic_write(self.root / "figures" / f"{name}.png", lambda p: fig.savefig(p, format="png"))
        plt.close(fig)
        return path

    def metrics(self, headline: dict[str, float], details: dict, meta: dict) -> str:
        """Write ``metrics.json``: the stage's headline numbers only (flat, named, what DVC shows);
        ``details.json``: {"meta": meta + attack libraries used, **details} (every number, the config);
        ``training.json``: every model the run trained or loaded, with its training wall time.
        Returns a one-line confirmation for the notebook."""
        headline = self._prefixed(headline)
        _check_headline(headline, headline)
        blob = {"meta": {**meta, "attack_libraries": attack_libraries()}, **details}
        _atomic_write(self.root / "details.json", lambda p: p.write_text(json.dumps(_clean(blob), indent=2) + "\n"))
        _atomic_write(self.root / "metrics.json", lambda p: p.write_text(json.dumps(_clean(headline), indent=2) + "\n"))
        models = (
            json.dumps({"models": runs(), "rebuilt": rebuilt()}, indent=2) + "\n"
        )  # the pipeline adds the plan and the total
        _atomic_write(self.root / "training.json", lambda p: p.write_text(models))
        return (
            f"Wrote metrics.json ({len(headline)} headline numbers, what `dvc metrics show` lists), details.json "
            "(every number, the configuration and the metadata) and training.json (every model and its training time)."
        )

    def _prefixed(self, numbers: dict[str, float]) -> dict[str, float]:
        return {f"{self.prefix}{k}": v for k, v in numbers.items()}

    def add_metrics(self, extra: dict[str, float]) -> None:
        """Add ``extra`` (flat numbers, such as the claims' counts) to the ``metrics.json`` that
        :meth:`metrics` wrote, under the same rules."""
        path = self.root / "metrics.json"
        require(path.exists(), "add_metrics needs metrics.json: call metrics() first")
        extra = self._prefixed(extra)
        headline = {**json.loads(path.read_text()), **extra}
        _check_headline(headline, extra)  # metrics.json holds NaN as null: only the new values are checked
        _atomic_write(path, lambda p: p.write_text(json.dumps(_clean(headline), indent=2) + "\n"))


def _per_image(v) -> bool:
    """An array, or a dict of nothing but arrays (at any depth)."""
    if isinstance(v, dict):
        return bool(v) and all(_per_image(x) for x in v.values())
    return isinstance(v, np.ndarray)


def _clean(obj):
    """``obj`` as JSON writes it: floats rounded, NaN as null; per-image arrays (the intervals' input,
    summarised in ``claims.json``) left out."""
    if isinstance(obj, float):
        return None if math.isnan(obj) or math.isinf(obj) else round(obj, 6)
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items() if not _per_image(v)}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj
