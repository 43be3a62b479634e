"""One training loop with a pluggable perturbation source.

Sources: :class:`Clean` (none), :class:`AttackSource` (an attack from :mod:`lib.attacks`),
:class:`StoredPerturbation` (per-example perturbation carried across epochs) and
:class:`GeneratorSource` (a generator network trained against the classifier, concurrently).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from lib import data as D
from lib.cache import cached
from lib.errors import require
from lib.evaluate import accuracy
from lib.runtime import Acceleration, DryRun, progress, seed_everything, synchronize

LR_SCHEDULES = ("constant", "cosine")


class Clean:
    """No perturbation: plain training.

    A source's ``__call__`` returns adversarial inputs aligned with the batch, or a pair
    ``(x_adv, y_adv)`` when it makes a different number of examples (e.g. several per input).
    """

    joint = False
    needs_clean_logits = False  # True when extra_loss uses the clean logits (then they are computed)

    def start_epoch(self, epoch: int) -> None:
        """Called before each epoch (0-based)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor | None:
        return None

    def extra_loss(self, logits_clean, logits_adv, y) -> torch.Tensor | None:
        """Additional loss term (e.g. ATDA's domain adaptation); None for plain CE."""
        return None

    def step(self) -> None:
        """Called after the classifier's backward pass (joint sources update themselves here)."""


class AttackSource(Clean):
    """Adversarial examples from ``attack(model, x, y, **params)`` each batch."""

    def __init__(self, attack: Callable, **params):
        self.attack, self.params = attack, params

    def __call__(self, model, x, y, idx):
        return self.attack(model, x, y, **self.params)


class GeneratorSource(Clean):
    """A generator producing adversarial inputs, updated by gradient ASCENT on the classifier's loss.

    ``make_adv(model, x, y) -> x_adv`` must be differentiable w.r.t. the generator's parameters.
    The classifier's backward pass fills the generator's gradients too; :meth:`step` then takes
    an ascent step (``maximize=True`` optimizer): both players move concurrently, every batch.
    """

    joint = True

    def __init__(self, make_adv: Callable, optimizer: torch.optim.Optimizer):
        require(
            any(g.get("maximize") for g in optimizer.param_groups),
            "generator optimizer must be built with maximize=True",
        )
        self.make_adv, self.optimizer = make_adv, optimizer

    def __call__(self, model, x, y, idx):
        self.optimizer.zero_grad(set_to_none=True)
        return self.make_adv(model, x, y)

    def step(self) -> None:
        self.optimizer.step()


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run."""

    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    weight_decay: float = 0.0
    clean_weight: float = 0.0  # loss = w * CE(clean) + (1 - w) * CE(adv); 1.0 when no perturbation
    ema_decay: float | None = None
    seed: int = 0
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None
    lr_schedule: str = "constant"  # constant | cosine (annealed to 0 over ``epochs``, stepped once an epoch)

    def validate(self) -> None:
        require(self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}")
        require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        require(self.lr > 0, f"lr must be > 0, got {self.lr}")
        require(self.optimizer in ("adam", "sgd"), f"unknown optimizer '{self.optimizer}'; choose adam or sgd")
        require(0.0 <= self.clean_weight <= 1.0, f"clean_weight must be in [0, 1], got {self.clean_weight}")
        require(self.ema_decay is None or 0 < self.ema_decay < 1, f"ema_decay must be in (0, 1), got {self.ema_decay}")
        require(
            self.lr_schedule in LR_SCHEDULES,
            f"unknown lr_schedule '{self.lr_schedule}'; choose one of {', '.join(LR_SCHEDULES)}",
        )


@dataclass
class TrainResult:
    """The trained model (EMA copy when requested) and per-epoch history."""

    model: nn.Module
    history: list[dict] = field(default_factory=list)
    ema: nn.Module | None = None
    seconds: float | None = None  # training wall time (from the run that trained, when loaded)
    loaded: bool = False  # whether the weights came from the model store

    @property
    def best_epoch(self) -> int:
        """The epoch (1-based) of the highest validation accuracy, else the last one."""
        val = [h.get("val_acc", float("-inf")) for h in self.history]
        return val.index(max(val)) + 1 if val and max(val) > float("-inf") else len(self.history)

    @property
    def final(self) -> nn.Module:
        """The model to evaluate: the EMA weights when kept, else the raw weights."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def sec_per_epoch(self) -> float:
        """Mean wall time of one epoch (seconds, this machine)."""
        secs = [h["seconds"] for h in self.history]
        return sum(secs) / len(secs) if secs else float("nan")


def _split_labels(out, y: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A source returns x_adv, or (x_adv, y_adv) when it makes several examples per input."""
    return out if isinstance(out, tuple) else (out, y)


def make_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule of ``cfg.lr_schedule`` (None: constant), stepped after every epoch."""
    if cfg.lr_schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    return None


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam or SGD (momentum) as configured."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def train(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    cfg: TrainConfig,
    source: Clean | None = None,
    on_epoch_end: Callable[[int, nn.Module], dict] | None = None,
    max_batches: int | None = None,
    desc: str = "train",
    cache_as: str | None = None,
) -> TrainResult:
    """Train ``model`` on ``loader`` (yielding ``x, y, idx``) with inputs from ``source``.

    ``on_epoch_end(epoch, model)`` may return extra numbers to store in the history (it runs
    outside the timed part); a true ``"stop"`` entry ends training (see :class:`EarlyStopping`,
    whose best weights are restored at the end). ``max_batches`` caps the batches per epoch
    (timing runs, smoke tests). ``cache_as``: the model's name in the model store
    (:mod:`lib.cache`): loaded from it when the same run was saved before, else trained and saved.
    """
    cfg.validate()
    source = source or Clean()
    ema = _ema(model, cfg)
    if cache_as is None:
        return _train(model, loader, cfg, source, ema, on_epoch_end, max_batches, desc)
    modules = {"model": model, **({"ema": ema} if ema is not None else {}), **source_modules(source)}
    record = cached(
        cache_as,
        modules,
        lambda: {"history": _train(model, loader, cfg, source, ema, on_epoch_end, max_batches, desc).history},
        key=(cfg, loader, on_epoch_end, max_batches),
        caller=sys._getframe(1).f_code,
        seeded=True,
    )
    model.eval()
    return TrainResult(model, record["history"], ema, seconds=record["seconds"], loaded=record["loaded"])


def training_precision(dev: torch.device):
    """bf16 autocast on the fast GPU path (see :class:`lib.runtime.Acceleration`); float32 otherwise."""
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=Acceleration.gpu_fast(dev))


def _ema(model: nn.Module, cfg: TrainConfig) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights, when ``cfg.ema_decay`` asks for one."""
    return (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema_decay), use_buffers=True)
        if cfg.ema_decay
        else None
    )


def source_modules(source: Clean) -> dict[str, nn.Module]:
    """The networks a source trains alongside the classifier (generators), by attribute name."""
    return {f"source.{k}": v for k, v in vars(source).items() if isinstance(v, nn.Module)}


def _loss(model: nn.Module, source: Clean, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, w: float):
    """One batch's training loss: CE on the source's examples (weight 1 - ``w``) + CE on the clean ones (``w``)
    + the source's extra term; returns (loss, clean logits, adversarial logits, adversarial labels)."""
    x_adv, y_adv = _split_labels(source(model, x, y, idx), y)
    model.train()
    if x_adv is None:
        logits_clean = model(x)
        return F.cross_entropy(logits_clean, y), logits_clean, None, y_adv
    logits_adv = model(x_adv if source.joint else x_adv.detach())
    logits_clean = model(x) if w > 0 or source.needs_clean_logits else None
    loss = (1 - w) * F.cross_entropy(logits_adv, y_adv)
    if w > 0:
        loss = loss + w * F.cross_entropy(logits_clean, y)
    extra = source.extra_loss(logits_clean, logits_adv, y)
    if extra is not None:
        loss = loss + extra
    return loss, logits_clean, logits_adv, y_adv


def _update(source: Clean, model: nn.Module, opt: torch.optim.Optimizer, x, y, idx, cfg: TrainConfig) -> tuple:
    """One batch: the classifier's loss on the source's examples (:func:`_loss`), its descent step, then the
    source's own step. Returns (loss, clean logits, adversarial logits, adversarial labels)."""
    with training_precision(x.device):
        out = _loss(model, source, x, y, idx, cfg.clean_weight)
    opt.zero_grad(set_to_none=True)
    out[0].backward()
    opt.step()
    source.step()
    return out


def _train(model, loader, cfg: TrainConfig, source: Clean, ema, on_epoch_end, max_batches, desc) -> TrainResult:
    seed_everything(cfg.seed)
    dev = next(model.parameters()).device
    fast = Acceleration.gpu_fast(dev)  # CUDA: bf16 autocast, channels-last, data on the device
    if fast:
        model.to(memory_format=torch.channels_last)
    opt = make_optimizer(model.parameters(), cfg)
    schedule = make_schedule(opt, cfg)
    result = TrainResult(model, ema=ema)
    max_batches = DryRun.batches(max_batches)
    for epoch in progress(range(DryRun.epochs(cfg.epochs)), desc=desc):
        model.train()
        source.start_epoch(epoch)
        synchronize()
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=dev)
        correct = torch.zeros((), device=dev)
        seen = 0
        for b, (x, y, idx) in enumerate(D.batches(loader, dev, on_device=fast)):
            if max_batches is not None and b >= max_batches:
                break
            if fast and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if cfg.augment is not None:
                x = cfg.augment(x)
            game = getattr(source, "update", None)  # a source whose training is a game of its own (PGN's min-max)
            step = (
                game(model, opt, x, y, idx, cfg.clean_weight) if game else _update(source, model, opt, x, y, idx, cfg)
            )
            loss, logits_clean, logits_adv, y_adv = step
            if ema is not None:
                ema.update_parameters(model)
            with torch.no_grad():
                shown, shown_y = (logits_adv, y_adv) if logits_adv is not None else (logits_clean, y)
                loss_sum += loss.detach() * len(y)
                correct += (shown.argmax(1) == shown_y).sum() * len(y) / len(shown_y)
                seen += len(y)
        synchronize()
        if schedule is not None:
            schedule.step()
        record = {
            "epoch": epoch + 1,
            "seconds": time.perf_counter() - t0,
            "train_loss": float(loss_sum) / max(seen, 1),
            "train_acc": float(correct) / max(seen, 1),
        }
        if on_epoch_end is not None:
            record.update(on_epoch_end(epoch, result.final))
        if record.pop("stop", False):
            record["early_stopped"] = True
            result.history.append(record)
            break
        result.history.append(record)
    if isinstance(on_epoch_end, EarlyStopping):
        on_epoch_end.restore(model)
    model.eval()
    return result


class Validation:
    """``on_epoch_end`` hook: the model's accuracy on a held-out validation split after every epoch
    (``val_acc`` in the history), what the convergence gates of :mod:`lib.claims` read."""

    def __init__(self, x_val: torch.Tensor, y_val: torch.Tensor):
        require(len(y_val) > 0, "the validation split is empty")
        self.x_val, self.y_val = x_val, y_val

    def __call__(self, epoch: int, model: nn.Module) -> dict:
        return {"val_acc": accuracy(model, self.x_val, self.y_val)}


class EarlyStopping(Validation):
    """``on_epoch_end`` hook: validation accuracy each epoch; stop after ``patience`` epochs without
    improvement (the last record then says ``early_stopped``). :meth:`restore` then loads the best
    weights seen."""

    def __init__(self, x_val: torch.Tensor, y_val: torch.Tensor, patience: int):
        require(patience >= 1, f"patience must be >= 1, got {patience}")
        super().__init__(x_val, y_val)
        self.patience = patience
        self.best, self.best_epoch, self.state, self.waited = -1.0, 0, None, 0

    def __call__(self, epoch: int, model: nn.Module) -> dict:
        acc = super().__call__(epoch, model)["val_acc"]
        if acc > self.best:
            self.best, self.best_epoch, self.waited = acc, epoch + 1, 0
            self.state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.waited += 1
        return {"val_acc": acc, "stop": self.waited >= self.patience}

    def restore(self, model: nn.Module) -> nn.Module:
        """Load the best weights seen (no-op before the first epoch)."""
        if self.state is not None:
            model.load_state_dict(self.state)
        return model


def validation_hook(x_val: torch.Tensor, y_val: torch.Tensor, patience: int | None = None) -> Validation:
    """The ``on_epoch_end`` hook of one model: validation accuracy each epoch, and with ``patience``
    early stopping too (a fresh hook per model: :class:`EarlyStopping` keeps the best weights)."""
    return EarlyStopping(x_val, y_val, patience) if patience else Validation(x_val, y_val)
