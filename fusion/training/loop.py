"""The one training loop: every expert and the learned fusion train through :class:`Fit`.

A recipe subclasses :class:`Fit` (as speechbrain's recipes extend ``Brain``) and says what is its own: which batches
an epoch draws (:meth:`Fit.batches`), the loss of a batch (:meth:`Fit.loss`), and optionally a validation score
(:meth:`Fit.validate`) and what happens at the end of each step and epoch. The loop owns the rest, the same for all:

- AdamW (built by the caller, who knows the parameter groups) and a learning-rate schedule stepped once per step
  (:func:`warmup_cosine`, :func:`warmup_linear`; None for a constant rate);
- bf16 autocast (always on CUDA, on the CPU where the recipe asks: encoders.runtime.autocast) and optional
  gradient clipping;
- the whole state saved atomically after every epoch (:data:`STATE_FILE`: weights, optimiser, schedule, random
  generators, history), so ``resume=True`` continues a run cut short and loses one epoch at most; resuming with
  other settings is refused;
- keeping the best epoch by a validation score (:meth:`Fit.on_best` is told) and stopping early after `patience`
  epochs without a better one.
"""

from __future__ import annotations

import copy
import json
import math
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from encoders.runtime import autocast
from fusion.errors import CheckpointError
from fusion.storage import atomic_path

STATE_FILE = "training_state.pt"  # the resumable state, in the folder the run writes its checkpoint to; not shipped


@dataclass
class FitResult:
    history: list[dict]  # one record per epoch: epoch, train_loss, and what validate() returned
    best_epoch: int  # 1-based epoch of the best validation score; the last epoch without one (0: none trained)
    seconds: float  # training wall time, this run's and any run it resumed


class Fit:
    """One resumable training run of `model`; subclasses give batches and loss (see the module's docstring).

    keep: the key of validate()'s record that chooses the best epoch (higher is better; a name starting with "-"
    means lower is better, e.g. "-loss"), or None: the last epoch is the result. validate_first: validate the
    untrained model too, as epoch 0, so that training must beat where it starts.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler | None = None,
        *,
        device: torch.device,
        generator: torch.Generator,
        bf16: bool = False,
        max_grad_norm: float | None = None,
        state_dir: str | Path | None = None,
        settings: dict | None = None,
        keep: str | None = None,
        validate_first: bool = False,
        patience: int | None = None,
    ):
        self.model, self.optimizer, self.schedule = model, optimizer, schedule
        self.device, self.generator, self.bf16 = device, generator, bf16
        self.max_grad_norm = max_grad_norm
        self.state_path = None if state_dir is None else Path(state_dir) / STATE_FILE
        self.settings = settings or {}
        self.keep, self.validate_first, self.patience = keep, validate_first, patience
        self.progress = {"epoch": 0, "history": [], "seconds": 0.0, "best": None, "best_epoch": 0}

    # --------------------------------------------------------------------------------------- what a recipe gives

    def batches(self, epoch: int) -> Iterable:
        """The batches of epoch (1-based), drawn with self.generator."""
        raise NotImplementedError

    def loss(self, batch) -> torch.Tensor:
        """The scalar loss of one batch (called under autocast, with the model in training mode)."""
        raise NotImplementedError

    def validate(self) -> dict | None:
        """Scores of the model as it is now (None: no validation data)."""
        return None

    def after_step(self, epoch: int, step: int) -> None:
        """Called after each optimiser step (step counts from 1 within the epoch)."""

    def after_epoch(self, epoch: int, record: dict) -> None:
        """Called after each epoch's training, before validation; may add to record."""

    def step_schedule(self, epoch: int) -> bool:
        """Whether the schedule steps in this epoch (a recipe that holds the rate constant for a while says no)."""
        return True

    def on_best(self, epoch: int) -> None:
        """The model has just scored its best validation yet (epoch 0: before training)."""

    def state_weights(self) -> dict[str, torch.Tensor]:
        """The weights the state file keeps (by default the whole model's)."""
        return self.model.state_dict()

    def load_state_weights(self, weights: dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(weights)

    # ----------------------------------------------------------------------------------------------------- loop

    def run(self, epochs: int, *, resume: bool = False, show: bool = False) -> FitResult:
        """Train until `epochs` epochs are done (counting those of a resumed run), or early stopping."""
        if resume:
            self._load()
        elif self.validate_first and self.progress["epoch"] == 0:
            self._judge(0, {"epoch": 0, **(self.validate() or {})})
        while self.progress["epoch"] < epochs and not self._stopped():
            epoch = self.progress["epoch"] + 1
            started = time.perf_counter()
            self.model.train()
            losses = []
            batches = self.batches(epoch)
            for step, batch in enumerate(tqdm(batches, disable=not show, desc=f"epoch {epoch}"), 1):
                with autocast(self.device, cpu_bf16=self.bf16):
                    loss = self.loss(batch)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if self.max_grad_norm is not None:
                    nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=self.max_grad_norm)
                self.optimizer.step()
                if self.schedule is not None and self.step_schedule(epoch):
                    self.schedule.step()
                losses.append(loss.item())
                self.after_step(epoch, step)
            record = {"epoch": epoch, "train_loss": float(np.mean(losses)) if losses else math.nan}
            self.after_epoch(epoch, record)
            self.model.eval()
            record |= self.validate() or {}
            self.progress["seconds"] += time.perf_counter() - started
            self.progress["epoch"] = epoch
            self._judge(epoch, record)
            self._save()
            if show:
                print(json.dumps(record | {"minutes": round(self.progress["seconds"] / 60, 2)}), flush=True)
        self.model.eval()
        best = self.progress["best_epoch"] if self.keep else self.progress["epoch"]
        return FitResult(self.progress["history"], best, self.progress["seconds"])

    def _judge(self, epoch: int, record: dict) -> None:
        self.progress["history"].append(record)
        if self.keep is None:
            return
        name, sign = (self.keep[1:], -1.0) if self.keep.startswith("-") else (self.keep, 1.0)
        value = sign * record[name]
        if self.progress["best"] is None or value > self.progress["best"]:
            self.progress["best"], self.progress["best_epoch"] = value, epoch
            self.on_best(epoch)

    def _stopped(self) -> bool:
        if self.patience is None or self.keep is None:
            return False
        return self.progress["epoch"] - self.progress["best_epoch"] >= self.patience

    def _save(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "weights": self.state_weights(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": None if self.schedule is None else self.schedule.state_dict(),
            "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "settings": json.dumps(self.settings, sort_keys=True),
            "progress": json.dumps(self.progress),
        }
        with atomic_path(self.state_path) as temporary:
            torch.save(state, temporary)

    def _load(self) -> None:
        """Restore the state _save wrote (tensors and plain values: read with weights_only, no pickled code)."""
        if self.state_path is None:
            raise ValueError("resume needs the state_dir of the run to continue")
        if not self.state_path.is_file():
            raise FileNotFoundError(f"nothing to resume: {self.state_path} does not exist")
        saved = torch.load(self.state_path, weights_only=True)
        if json.loads(saved["settings"]) != json.loads(json.dumps(self.settings, sort_keys=True)):
            raise CheckpointError(
                f"{self.state_path}: saved with other settings ({saved['settings']}); resume with the same ones"
            )
        self.optimizer.load_state_dict(saved["optimizer"])
        if self.schedule is not None:
            self.schedule.load_state_dict(saved["schedule"])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.progress = json.loads(saved["progress"])
        self.load_state_weights(saved["weights"])


class KeepBestInMemory:
    """A Fit mix-in: the best epoch's weights kept in memory and put back when the run ends (for runs short enough
    not to need them on disk)."""

    def on_best(self, epoch: int) -> None:
        self.best_weights = copy.deepcopy(self.model.state_dict())

    def run(self, epochs: int, **options) -> FitResult:
        result = super().run(epochs, **options)
        self.model.load_state_dict(self.best_weights)
        return result


def warmup_cosine(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_fraction: float):
    """Linear warm-up over warmup_fraction of the steps, then cosine decay to zero."""
    warmup = max(1, int(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def warmup_linear(optimizer: torch.optim.Optimizer, *, total_steps: int, warmup_fraction: float):
    """Linear warm-up over warmup_fraction of the steps (rounded), then linear decay to zero (BERT's schedule)."""
    warmup = max(1, round(warmup_fraction * total_steps))

    def factor(step: int) -> float:
        return min((step + 1) / warmup, max(0.0, (total_steps - step) / max(1, total_steps - warmup)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def balanced_weights(labels: Sequence[str], groups: Sequence[str] | None = None) -> torch.Tensor:
    """(N,) sampling weights giving each group an equal share and each class an equal share within its group."""
    groups = list(groups) if groups is not None else [""] * len(labels)
    classes_in_group = {g: len({label for label, h in zip(labels, groups) if h == g}) for g in set(groups)}
    counts = Counter(zip(groups, labels))
    weights = [
        1.0 / (len(classes_in_group) * classes_in_group[g] * counts[g, label]) for label, g in zip(labels, groups)
    ]
    return torch.tensor(weights, dtype=torch.float64)
