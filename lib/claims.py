"""Claims, their verdicts, and the validity gates that say whether a test could mean anything.

A claim's test is run in every profile, but it only means something when its preconditions hold:
the models it compares converged, their clean accuracy is near the paper's, the method's own
mechanism ran. Each precondition is a :class:`Gate` computed from the run. The verdict rule:
``not run`` when this profile does not run the claim's experiment; ``not testable`` if and only if
a gate failed (naming it and its number); otherwise, when the quantity carries a 95% interval
(:mod:`lib.intervals`), ``held`` if the interval lies wholly on the claim's side of its margin,
``did not hold`` if wholly on the other side, ``inconclusive`` if it straddles the margin; a claim
without an interval (a list of flagged items) is decided by its value. ``claims.json`` holds
``[{claim, verdict, paper, ours, rule, interval, n_images, n_seeds, caveat, gates: [{gate, value,
threshold, pass}]}]``; ``claims.md`` and the notebook's summary render it.

A stage states its claims as data: each a :class:`Spec` (the claim's words, the paper's value, the
quantity measured on the run's result, the :class:`Rule` that decides it, and its gates), which
:func:`evaluate` turns into :class:`Claim` records. No stage writes a verdict itself.
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lib.intervals import Interval, spread

VERDICTS = ("held", "did not hold", "inconclusive", "not testable", "not run")
DECIDED = ("held", "did not hold")
TESTABLE = ("held", "did not hold", "inconclusive")

# The thresholds of issue #18 (points of accuracy unless stated).
MOVEMENT_POINTS = 0.5  # converged: the last two epochs improved the best validation accuracy by less than this
PLATEAU_POINTS = 1.0  # a curve plateaued: it moved less than this over its last three epochs
MNIST_FROM_PAPER = 2.0  # clean accuracy on MNIST within this of the paper's
STAND_IN_FLOOR = 85.0  # clean accuracy of a baseline on a stand-in dataset (Fashion-MNIST)
SAME_ARCH_POINTS = 3.0  # or within this of the same architecture's converged clean run
PERTURBATION_RATIO = 2.0  # a generator's mean L2 perturbation within this factor of the matched budget
REGIME_POINTS = 10.0  # the undefended model's accuracy under the claim's attack within this of the paper's
MASKED_POINTS = 5.0  # an attack is masked on a model when AutoAttack is more than this below it
TIMING_REPEATS = 5  # a timing claim reads the median of at least this many interleaved rounds (in one process)
TIMING_SPREAD = 0.25  # and its per-round ratios agree: interquartile range / median at most this


@dataclass(frozen=True)
class Gate:
    """One precondition of a claim's test: ``value`` against ``threshold``, and whether it passed."""

    gate: str
    value: float
    threshold: float
    passed: bool

    def to_json(self) -> dict:
        return {
            "gate": self.gate,
            "value": _number(self.value),
            "threshold": _number(self.threshold),
            "pass": self.passed,
        }

    def __str__(self) -> str:
        return f"{self.gate}: {_fmt(self.value)} (threshold {_fmt(self.threshold)}) {'pass' if self.passed else 'FAIL'}"

    def short(self) -> str:
        """The gate as a summary table names it: without its explanations in parentheses (``claims.md`` keeps them)."""
        name, previous = self.gate, None
        while name != previous:
            name, previous = re.sub(r" \([^()]*\)", "", name), name
        return f"{name}: {_fmt(self.value)} (threshold {_fmt(self.threshold)})"


def _rounded(value: float) -> float:
    """``value`` to 4 decimals: accuracies are float32 means (97.0 can read 96.99999), so a
    comparison with a threshold must not be decided by the last bits."""
    return round(value, 4) if math.isfinite(value) else value


def at_least(gate: str, value: float, threshold: float) -> Gate:
    """Passes when ``value >= threshold`` up to float rounding (a NaN value fails)."""
    return Gate(gate, value, threshold, bool(_rounded(value) >= threshold))


def at_most(gate: str, value: float, threshold: float) -> Gate:
    """Passes when ``value <= threshold`` up to float rounding (a NaN value fails)."""
    return Gate(gate, value, threshold, bool(_rounded(value) <= threshold))


def movement(curve: Sequence[float], epochs: int) -> float:
    """How far (max - min, in the curve's units) ``curve`` moved over its last ``epochs`` epochs;
    NaN when it is shorter than ``epochs + 1`` points."""
    tail = list(curve)[-(epochs + 1) :]
    # rounded: accuracies are float32 means, so 10 images in 1,000 can read 0.99999 points, which is not "under 1"
    return round(max(tail) - min(tail), 4) if len(tail) == epochs + 1 else math.nan


def improvement(curve: Sequence[float], epochs: int) -> float:
    """How much (in the curve's units) the best of ``curve``'s last ``epochs`` values beats the best value
    before them (negative when they are all worse); NaN when nothing comes before them."""
    values = list(curve)
    if len(values) <= epochs or epochs < 1:
        return math.nan
    # rounded as in :func:`movement`: float32 means read 0.99999 for 1 point
    return round(max(values[-epochs:]) - max(values[:-epochs]), 4)


def converged(
    model: str, val_accuracy: Sequence[float], early_stopped: bool = False, points: float = MOVEMENT_POINTS
) -> Gate:
    """``model`` converged: early stopping fired on a validation split, or its last two epochs improved
    its best validation accuracy (%, one value per epoch) by less than ``points``: early stopping's
    rule (patience 2, minimum improvement ``points``) applied after the fact. A curve that only
    oscillates on a small validation split converged; one still climbing did not."""
    if early_stopped:
        return Gate(f"{model} converged (early stopping fired on the validation split)", 1.0, 1.0, True)
    gained = improvement(val_accuracy, 2)
    return Gate(
        f"{model} converged (gain of the last two epochs over the best before them, validation accuracy points)",
        gained,
        points,
        bool(gained < points),
    )


def converged_history(model: str, history: Sequence[dict], points: float = MOVEMENT_POINTS) -> Gate:
    """:func:`converged` from a training history (``lib.train``: ``val_acc`` per epoch as a fraction,
    ``early_stopped`` on the record where early stopping fired)."""
    val = [100 * h["val_acc"] for h in history if "val_acc" in h]
    return converged(model, val, any(h.get("early_stopped") for h in history), points)


def plateaued(curve_name: str, curve: Sequence[float], points: float = PLATEAU_POINTS, epochs: int = 3) -> Gate:
    """``curve`` (%, one value per epoch) moved less than ``points`` over its last ``epochs`` epochs."""
    moved = movement(curve, epochs)
    return Gate(
        f"{curve_name} plateaued (moved over the last {epochs} epochs, points)", moved, points, bool(moved < points)
    )


def clean_accuracy(
    model: str, ours: float, paper: float | None, dataset: str, stand_in: bool, same_arch_clean: float | None = None
) -> Gate:
    """Clean accuracy (%) high enough for a robustness claim to mean something: within 2 points of
    the paper's on the paper's dataset; on a stand-in dataset at least 85%, or within 3 points of
    ``same_arch_clean`` (the same architecture's converged clean run in this stage) when given."""
    if not stand_in and paper is not None:
        return at_least(
            f"{model} clean accuracy on {dataset} (%, paper {paper:g} - {MNIST_FROM_PAPER:g})",
            ours,
            paper - MNIST_FROM_PAPER,
        )
    if same_arch_clean is not None:
        return at_least(
            f"{model} clean accuracy on {dataset} (%, this stage's clean run - {SAME_ARCH_POINTS:g})",
            ours,
            same_arch_clean - SAME_ARCH_POINTS,
        )
    return at_least(f"{model} clean accuracy on {dataset} (%)", ours, STAND_IN_FLOOR)


@dataclass
class Claim:
    """A claim of the paper (or ours), the numbers it was tested on, and its gates.

    ``held`` is the point estimate's outcome; ``interval`` (95%) and ``rule`` decide the verdict when
    the claim has an interval; :attr:`verdict` reports either only when every gate passed.
    ``paper`` / ``ours``: the numbers compared (a number or a short text); ``caveat``: what a reader
    must know beside the verdict (e.g. the attack is masked on both models); ``ran``: False for a
    claim this profile does not run."""

    claim: str
    paper: float | str | None
    ours: float | str | None
    held: bool
    gates: list[Gate] = field(default_factory=list)
    detail: str = ""
    interval: Interval | None = None
    rule: Rule | None = None
    caveat: str = ""
    ran: bool = True

    @property
    def failed_gates(self) -> list[Gate]:
        return [g for g in self.gates if not g.passed]

    @property
    def verdict(self) -> str:
        if not self.ran:
            return "not run"
        if self.failed_gates:
            return "not testable"
        if self.interval is not None and self.rule is not None and self.rule.ordered:
            return self.rule.decide(self.interval.low, self.interval.high)
        return "held" if self.held else "did not hold"

    def to_json(self) -> dict:
        interval = self.interval
        return {
            "claim": self.claim,
            "verdict": self.verdict,
            "paper": _number(self.paper),
            "ours": _number(self.ours),
            "rule": None if self.rule is None else self.rule.to_json(),
            "interval": None if interval is None else interval.to_json(),
            "n_images": None if interval is None else interval.n_images,
            "n_seeds": None if interval is None else interval.n_seeds,
            "caveat": self.caveat,
            "gates": [g.to_json() for g in self.gates],
        }

    def ours_text(self) -> str:
        """Ours as a verdict line shows it: the interval and its margin, then what the claim measured when that
        says more than the interval's number (each model's value, a count of levels) and can sit beside the
        paper's."""
        if self.interval is None:
            return _fmt(self.ours)
        return _beside(str(self.interval) + (f" (margin {self.rule})" if self.rule is not None else ""), self.ours)

    def markdown(self) -> str:
        head = f"- **{self.verdict}** — {self.claim}: ours {self.ours_text()}"
        head += f", paper {_fmt(self.paper)}" if self.paper is not None else ""
        head += f" — {self.caveat}" if self.caveat else ""
        head += f". {self.detail}" if self.detail else "."
        if self.failed_gates:
            head += " Not testable because: " + "; ".join(str(g) for g in self.failed_gates) + "."
        passed = [g for g in self.gates if g.passed]
        if passed:
            head += " Gates passed: " + "; ".join(str(g) for g in passed) + "."
        return head


_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq}


@dataclass(frozen=True)
class Rule:
    """How a claim's quantity decides it: ``quantity <op> margin`` (the margin in the quantity's units;
    ``==`` also compares a list of flagged items with ``()``)."""

    op: str
    margin: Any = 0.0

    def __post_init__(self) -> None:
        if self.op not in _OPS:
            raise ValueError(f"unknown comparison {self.op!r}; one of {', '.join(_OPS)}")

    def holds(self, quantity: Any) -> bool:
        if quantity is None or (isinstance(quantity, float) and math.isnan(quantity)):
            return False
        if self.op == "==" and isinstance(self.margin, tuple):
            return tuple(quantity) == self.margin
        if isinstance(quantity, float):  # as for gates: a float32 difference must not be decided by its last bits
            quantity = _rounded(quantity)
        return bool(_OPS[self.op](quantity, self.margin))

    @property
    def ordered(self) -> bool:
        """Whether an interval can be read against this rule (``>``, ``>=``, ``<``, ``<=``)."""
        return self.op != "=="

    def to_json(self) -> dict:
        return {"op": self.op, "margin": list(self.margin) if isinstance(self.margin, tuple) else self.margin}

    def decide(self, low: float, high: float) -> str:
        """The verdict of a 95% interval ``[low, high]`` against the margin: ``held`` when it lies wholly
        on the claim's side, ``did not hold`` when wholly on the other, ``inconclusive`` when it straddles
        the margin (for ``>``, ``>=``, ``<`` and ``<=``)."""
        if self.op not in ("<", "<=", ">", ">="):
            raise ValueError(f"an interval is decided against an ordered margin, not {self.op!r}")
        low, high = _rounded(low), _rounded(high)
        if math.isnan(low) or math.isnan(high):
            return "inconclusive"
        inside, outside = (low, high) if self.op[0] == ">" else (high, low)
        if self.holds(inside):
            return "held"
        if not self.holds(outside):
            return "did not hold"
        return "inconclusive"

    def __str__(self) -> str:
        return f"{self.op} {self.margin!r}" if self.op == "==" else f"{self.op} {self.margin:g}"


def above(margin: float = 0.0) -> Rule:
    """Held when the quantity is more than ``margin``."""
    return Rule(">", margin)


def not_below(margin: float = 0.0) -> Rule:
    """Held when the quantity is at least ``margin``."""
    return Rule(">=", margin)


def below(margin: float = 0.0) -> Rule:
    """Held when the quantity is less than ``margin``."""
    return Rule("<", margin)


def not_above(margin: float = 0.0) -> Rule:
    """Held when the quantity is at most ``margin``."""
    return Rule("<=", margin)


NONE_FLAGGED = Rule("==", ())  # held when the list of flagged models (or points) is empty


def _no_gates(result: Any) -> list[Gate]:
    return []


@dataclass(frozen=True)
class Spec:
    """A claim as data: its words, the paper's value, the ``quantity`` measured on a run's result,
    the ``rule`` that decides it (its margin in the quantity's units), and its ``gates``.
    ``interval``: the quantity's 95% interval on the run's result (:mod:`lib.intervals`), which
    decides the verdict against the rule's margin; ``shown``: the quantity as the claim table shows
    it (default: the quantity itself); ``applies``: whether this run can state the claim at all (a
    defence the profile did not train: no claim); ``detail``: a sentence of context for
    ``claims.md``; ``caveat``: what the verdict line must say beside the verdict (e.g. a masked
    attack); ``missing``: set by :func:`not_run`."""

    claim: str
    quantity: Callable[[Any], Any]
    rule: Rule
    gates: Callable[[Any], list[Gate]] = _no_gates
    paper: Any = None
    shown: Callable[[Any], Any] | None = None
    applies: Callable[[Any], bool] | None = None
    detail: Callable[[Any], str] | None = None
    interval: Callable[[Any], Interval | None] | None = None
    caveat: Callable[[Any], str] | None = None
    missing: str = ""

    def evaluate(self, result: Any) -> Claim:
        if self.missing:
            return Claim(self.claim, self.paper, None, False, detail=f"Not run: {self.missing}", ran=False)
        quantity = self.quantity(result)
        ours = self.shown(result) if self.shown else quantity
        return Claim(
            self.claim,
            self.paper,
            ours,
            self.rule.holds(quantity),
            self.gates(result),
            self.detail(result) if self.detail else "",
            self.interval(result) if self.interval else None,
            self.rule,
            self.caveat(result) if self.caveat else "",
        )


def not_run(claim: str, paper: Any, what: str) -> Spec:
    """A claim this profile does not run (``what``: what is missing, e.g. "the ablation is not run in
    this profile"): listed as ``not run``, outside the testable count, with no gate."""
    return Spec(claim, lambda r: None, NONE_FLAGGED, paper=paper, missing=what)


def evaluate(specs: Iterable[Spec], result: Any) -> list[Claim]:
    """Each spec that applies to ``result``, decided by its rule and gated by its gates."""
    return [s.evaluate(result) for s in specs if s.applies is None or s.applies(result)]


def steady(name: str, numerator: Sequence[float], denominator: Sequence[float]) -> list[Gate]:
    """A timing ratio's gates (``numerator`` and ``denominator`` timed in the same interleaved rounds, see
    :mod:`lib.timing`): at least ``TIMING_REPEATS`` rounds, and the per-round ratios agree (their spread,
    interquartile range / median, at most ``TIMING_SPREAD``: the claim reads their median, which one disturbed
    round does not move, so one disturbed round does not fail it; a machine disturbed in many rounds does)."""
    ratios = [a / b for a, b in zip(numerator, denominator, strict=True)]
    return [
        at_least(f"{name}: interleaved timing rounds", len(ratios), TIMING_REPEATS),
        at_most(
            f"{name}: spread of the per-round ratios (interquartile range / median)", spread(ratios), TIMING_SPREAD
        ),
    ]


def matched_regime(model: str, attack: str, ours: float, paper: float) -> Gate:
    """The paper's test, not a weaker one: the undefended ``model``'s accuracy (%) under ``attack``
    within ``REGIME_POINTS`` of the paper's. An attack far weaker relative to the model than in the
    paper (our model keeps 92.7% where the paper's keeps 39.5%) does not test the paper's claim."""
    return at_most(
        f"{model} under {attack}: distance to the paper's {paper:g}% (points; matched attack strength)",
        abs(ours - paper),
        REGIME_POINTS,
    )


def masked(attack: str, accuracies: dict[str, tuple[float, float]]) -> str:
    """The caveat a verdict carries when ``attack`` is masked on the models it compares:
    ``accuracies`` maps each model to (accuracy under ``attack``, under AutoAttack), in %; a model
    is masked when AutoAttack is more than ``MASKED_POINTS`` below. Empty when none is."""
    hit = {m: aa for m, (acc, aa) in accuracies.items() if acc - aa > MASKED_POINTS}
    if not hit:
        return ""
    who = "both" if len(hit) == len(accuracies) == 2 else ("all" if len(hit) == len(accuracies) else join(hit))
    return f"{who} masked under {attack}: AutoAttack " + " vs ".join(f"{aa:.1f}%" for aa in hit.values())


ANSWERS = ("replicates", "replicates in part", "does not replicate", "not testable at this scale")
ANSWER_RULE = (
    "replicates: every testable claim held and at least half of the claims were testable; replicates in "
    "part: some held, while others did not, were inconclusive, or too few were testable; does not "
    "replicate: a claim was decided and none held; not testable at this scale: no claim was decided "
    "(each was not testable, inconclusive or not run)"
)


def answer(verdicts: Sequence[str]) -> str:
    """A paper's answer from its claims' verdicts (the rule: :data:`ANSWER_RULE`)."""
    held, failed, open_ = (sum(v == w for v in verdicts) for w in ("held", "did not hold", "inconclusive"))
    if held + failed == 0:
        return "not testable at this scale"
    if held == 0:
        return "does not replicate"
    testable = held + failed + open_
    return "replicates" if held == testable and 2 * testable >= len(verdicts) else "replicates in part"


OURS = re.compile(r"(^|, )ours:", re.IGNORECASE)  # a check of ours beside the paper's claims ("Ours: ...")


def decisive(claims: Sequence[dict]) -> dict | None:
    """The claim a paper's answer rests on (``claims.json`` records): the first decided claim of the paper's
    own (stages list the paper's main claim first; a check of ours, "Ours: ...", only when no claim of the
    paper's was decided), else the first testable one in the same order, else None."""
    for wanted in (DECIDED, TESTABLE):
        for theirs in (True, False):
            found = next(
                (c for c in claims if c["verdict"] in wanted and theirs != bool(OURS.search(c["claim"]))), None
            )
            if found:
                return found
    return None


def join(items: Iterable[str], empty: str = "none") -> str:
    """Flagged items as a claim shows them: comma-separated, or ``empty``."""
    return ", ".join(items) or empty


def counts(claims: Iterable[Claim]) -> dict[str, int]:
    """How many claims have each verdict (DVC metrics names: ``claims_held``, ``claims_inconclusive``, ...)."""
    verdicts = [c.verdict for c in claims]
    return {f"claims_{v.replace(' ', '_')}": verdicts.count(v) for v in VERDICTS}


MARGINS = (
    'Margins (the paper\'s words, read as): "beats", "improves", "more robust", "falls further", '
    '"transfers" = by more than 1 point (the papers report to 0.1-1 point, and a smaller gap is within the noise of a '
    'few hundred test images); "at least as robust" = not more than 1 point below; "similar", "same level" = '
    'within 5 points (our reading: the papers give no number); "cheaper" = a time ratio below 0.9 (a 10% saving, the '
    'smallest a practitioner would call cheaper, and above the spread of repeated timings); "loses some" = below 0. '
    "A verdict reads the 95% interval against the margin, never the point estimate."
)


def _beside(interval: str, measured: Any) -> str:
    """An interval as a verdict line shows it, followed by what the claim measured when that is text (each
    model's value, a count of levels) rather than the interval's own number."""
    return f"{interval}; {measured}" if isinstance(measured, str) and measured else interval


def evidence(record: dict) -> str:
    """A ``claims.json`` record as its answer line quotes it: the claim, paper vs ours (± its interval), the verdict."""
    interval, measured = record.get("interval"), record.get("ours")
    ours = (
        _fmt(measured)
        if not interval
        else _beside(f"{interval['estimate']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]", measured)
    )
    paper = f"paper {_fmt(record['paper'])}, " if record.get("paper") is not None else ""
    caveat = f"; {record['caveat']}" if record.get("caveat") else ""
    return f"{record['claim']}: {paper}ours {ours} ({record['verdict']}{caveat})"


def answer_line(records: Sequence[dict]) -> str:
    """The paper's one-line answer from its ``claims.json`` records: the answer, then the claim it rests on."""
    verdict = answer([r["verdict"] for r in records])
    found = decisive(records)
    return f"**{verdict}**" + (f" — decisive claim: {evidence(found)}" if found else "")


def markdown(claims: Sequence[Claim]) -> str:
    """``claims.md``: the paper's answer, the counts, then one line per claim."""
    n = counts(claims)
    total = ", ".join(f"{n['claims_' + v.replace(' ', '_')]} {v}" for v in VERDICTS)
    return "\n".join(
        [
            "Answer: " + answer_line([c.to_json() for c in claims]),
            "",
            f"**{len(claims)} claims: {total}.** (The answer's rule: {ANSWER_RULE}.)",
            "",
            MARGINS,
            "",
            *(c.markdown() for c in claims),
        ]
    )


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ")


def _gates_cell(claim: Claim) -> str:
    """A claim's gates for the summary: the failing ones spelled out, the passing ones counted; the caveat."""
    failed = [g.short() for g in claim.failed_gates]
    passed = len(claim.gates) - len(failed)
    parts = ([f"**failed:** {'; '.join(failed)}"] if failed else []) + ([f"{passed} passed"] if passed else [])
    if claim.caveat:
        parts.append(claim.caveat)
    return "; ".join(parts) or "none"


def summary_table(claims: Sequence[Claim]) -> str:
    """The verdicts as one Markdown table (claim | paper | ours, 95% interval | verdict | gates and caveat):
    what a notebook opens with; ``claims.md`` keeps every gate and the margins' reasons."""
    header = "| claim | paper | ours (95% interval) | verdict | gates; caveat |\n|:--|--:|:--|:--|:--|"
    rows = []
    for c in claims:
        paper = "—" if c.paper is None else _fmt(c.paper)
        cells = [c.claim, paper, c.ours_text(), f"**{c.verdict}**", _gates_cell(c)]
        rows.append("| " + " | ".join(_cell(x) for x in cells) + " |")
    return "\n".join([header, *rows])


def write(claims: Sequence[Claim], root: Path | str) -> None:
    """``claims.json`` and ``claims.md`` in ``root``."""
    root = Path(root)
    (root / "claims.json").write_text(json.dumps([c.to_json() for c in claims], indent=2, ensure_ascii=False) + "\n")
    (root / "claims.md").write_text(markdown(claims) + "\n")


def _number(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 4)
    return v


def _fmt(v) -> str:
    if v is None:  # a claim not run has no number of ours
        return "—"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4g}"
    return str(v)
