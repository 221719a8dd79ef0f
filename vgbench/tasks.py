"""The task kinds: what a data set asks of a network, and how it is scored.

A data set names its task (``DatasetSpec.task``). Outputs and targets come
models first (``[K, N, ...]``, the K models of a cell group), and the loss and
sums return one value per model. The task owns the loss, the
evaluation sums that DDP ranks add up, the headline metric with its direction,
and the rule that calls a cell trainable against the data set's closed-form
baseline (chance accuracy, the constant predictor's MSE, the memoryless
cross-entropy). One LightningModule serves every task (rather than one per task kind:
the differences fit in these few functions).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from vgbench.registry import Registry

# Copy-memory (Arjovsky, Shah & Bengio 2016): the last RECALL_LENGTH outputs are the recall.
RECALL_LENGTH = 10


@dataclass(frozen=True)
class Task:
    name: str
    summary: str
    metric: str                 # the headline metric, a key of ``finish``'s result
    higher_is_better: bool
    per_step: bool              # one output per time step
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]        # (outputs, y) -> [K] mean losses
    sums: Callable[[torch.Tensor, torch.Tensor], list[torch.Tensor]]  # (outputs, y) -> additive [K] sums
    finish: Callable[[list[float]], dict[str, float]]                 # summed sums -> metrics incl. "loss"
    # The values the headline metric can take: a t interval over seeds is clipped to them (an accuracy
    # interval past 1 or a loss interval below 0 is arithmetic, not a possible outcome; report/statistics.py).
    metric_range: tuple[float, float]
    scalar_output: bool = False  # one real output instead of one logit per class
    # Per-step tasks: the gradient-flow probes follow back the loss of the last ``probed_steps`` steps only
    # (``probe_loss``). A loss at every step gives each state a direct term from its own step, which hides
    # what comes back through time: the first/last ratio of that gradient stays near 1 whatever the net.
    probed_steps: int | None = None
    probed_loss: str = "the training loss"  # what ``probe_loss`` is, in words (grad_profile.json says it)

    def __post_init__(self):
        if self.per_step and self.probed_steps is None:
            raise ValueError(f"task {self.name!r} scores every step: it must name the steps its probes read "
                             "(probed_steps)")

    def probe_loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """[K] mean losses whose gradient the probes follow back to every state: the training loss, or a
        per-step task's loss over its last ``probed_steps`` steps."""
        if self.probed_steps is None:
            return self.loss(outputs, y)
        return self.loss(outputs[:, :, -self.probed_steps:], y[:, :, -self.probed_steps:])

    def num_outputs(self, num_classes: int) -> int:
        return 1 if self.scalar_output else num_classes

    def trainable(self, metric: float, baseline: float, accuracy_margin: float, loss_fraction: float) -> bool:
        """Accuracy tasks: at least ``accuracy_margin`` above chance. Loss tasks: at most
        ``loss_fraction`` of the baseline loss ("well below" the memoryless/constant predictor)."""
        if metric != metric:  # NaN
            return False
        if self.higher_is_better:
            return metric >= baseline + accuracy_margin
        return metric <= baseline * loss_fraction

    def target(self, baseline: float, target_accuracy: float, loss_fraction: float) -> float:
        """The validation metric counted as 'reached' for epochs-to-target."""
        return target_accuracy if self.higher_is_better else baseline * loss_fraction

    def reached(self, value: float, target: float) -> bool:
        return value >= target if self.higher_is_better else value <= target


TASKS: Registry[Task] = Registry("task")


def _count(y: torch.Tensor) -> torch.Tensor:
    """Targets per model, [K]."""
    return torch.full((y.shape[0],), float(y[0].numel()), device=y.device)


def _per_model(values: torch.Tensor, models: int) -> torch.Tensor:
    """Per-element values -> [K, elements], one row per model."""
    return values.view(models, -1)


def _cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """[K, ..., C] logits and [K, ...] labels -> [K, elements] per-element cross-entropies."""
    return _per_model(F.cross_entropy(logits.flatten(0, -2), y.flatten(), reduction="none"), y.shape[0])


# -- classification: one label per sample ----------------------------------------------------------
def _classification_sums(logits, y):
    return [_cross_entropy(logits, y).sum(dim=1), (logits.argmax(dim=-1) == y).flatten(1).sum(dim=1), _count(y)]


TASKS.add("classification", Task(
    "classification", "one class per sample; accuracy against chance 1/C", "accuracy", True, False,
    loss=lambda logits, y: _cross_entropy(logits, y).mean(dim=1), sums=_classification_sums,
    finish=lambda s: {"loss": s[0] / s[2], "accuracy": s[1] / s[2]}, metric_range=(0.0, 1.0)))


# -- regression: one real target per sample (adding problem) ---------------------------------------
def _squared_errors(outputs, y):
    return _per_model((outputs.squeeze(-1) - y) ** 2, y.shape[0])


TASKS.add("regression", Task(
    "regression", "one real target per sample; MSE against the constant predictor's (the target variance)",
    "mse", False, False, loss=lambda out, y: _squared_errors(out, y).mean(dim=1),
    sums=lambda out, y: [_squared_errors(out, y).sum(dim=1), _count(y)],
    finish=lambda s: {"loss": s[0] / s[1], "mse": s[0] / s[1]}, metric_range=(0.0, math.inf),
    scalar_output=True))


# -- copy memory: one symbol per time step, scored on the recall ----------------------------------
def _copy_loss(logits, y):
    return _cross_entropy(logits, y).mean(dim=1)


def _copy_sums(logits, y):
    recall_logits, recall_y = logits[:, :, -RECALL_LENGTH:], y[:, :, -RECALL_LENGTH:]
    return [_cross_entropy(logits, y).sum(dim=1), _count(y),
            (recall_logits.argmax(dim=-1) == recall_y).flatten(1).sum(dim=1), _count(recall_y)]


TASKS.add("copy_memory", Task(
    "copy_memory", "one symbol per time step; cross-entropy against the memoryless 10 ln 8 / (T + 20), "
    "and accuracy on the recall positions", "cross_entropy", False, True, loss=_copy_loss, sums=_copy_sums,
    finish=lambda s: {"loss": s[0] / s[1], "cross_entropy": s[0] / s[1], "recall_accuracy": s[2] / s[3]},
    metric_range=(0.0, math.inf),
    # What must travel back T + 10 steps is the recall's gradient to the steps that showed the symbols.
    probed_steps=RECALL_LENGTH,
    probed_loss=f"the recall: the cross-entropy of the last {RECALL_LENGTH} steps"))
