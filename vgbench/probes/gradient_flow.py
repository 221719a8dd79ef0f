"""The gradient-flow probe: a Lightning callback shared by every family.

What it records, per probed layer l (input side first):

- ``dL_dh_norm``: ||dL/dh_l||, the norm over the batch of the gradient of the
  mean batch loss with respect to the hidden state h_l. This is the signal that
  vanishes on its way back (Glorot & Bengio 2010: weight gradients can stay
  flat while it shrinks toward the input); its first/last ratio is the
  headline vanishing metric. L is the task's ``probe_loss``: the training loss,
  or, for a task that scores every step (copy memory), the loss of its last
  steps (the recall), whose gradient must come back through time to the steps
  that showed the symbols. That one needs a pass of its own on probe steps
  (``_probe_loss_pass``): a forward and backward of the probe loss on the live
  batch before the training step, whose gradients reach the taps only.
- ``weight_grad_norm``: ||dL/dW_l|| as back-propagated, *before* clipping.
  With clipping on, ``weight_grad_norm_clipped`` holds the same norms *after*
  the Trainer clipped them (what the optimizer actually used).
- ``activation_variance``: Var(h_l) over batch and units (signal propagation).
- ``saturated_fraction`` (sigmoid/tanh: unit-samples within 0.01 of a bound)
  or ``dead_fraction`` (ReLU, the one unit here with no gradient below 0:
  units whose input is <= 0 for every sample of the batch; None for leaky
  ReLU, ELU and SELU, whose units keep a slope there and cannot die).
- ``gate_mean`` (gated families such as highway nets, else None): the mean
  transform-gate value T of each layer; near 0 the layer carries its input.
- at initialization only, ``theory_log10_dL_dh_first_last``: what mean-field
  theory predicts for log10 of the dL/dh first/last ratio of these weights and
  this batch (vgbench/probes/theory.py; NaN where it does not apply, ``theory``
  says why).

When: once at initialization, on a fixed training batch before the first
update (phase "init", on a copy of the network: in float32, and again in
float64 when a float32 norm underflowed (below 1e-30) or overflowed, so that
gradients far below float32's range still give a finite ratio, or in float64
alone where the mean-field prediction already says float32 cannot hold them;
each record says which), and on the live training batch every
``interval_steps`` optimizer steps (phase "train", in the training precision:
a zero there is what training saw). Under DDP the per-rank sums are all-reduced:
the global loss is the mean over ranks, so ||dL/dh||^2 of the global batch is
the sum over ranks divided by world_size^2. Under 16-mixed the taps see the
gradient of the loss times the GradScaler's scale (what keeps float16 from
underflowing) and divide it out. The weight-gradient norms are always the
training loss's: what the optimizer uses.

In a cell group (K stacked models) everything above is recorded per model,
from per-model sums, so model k's records are those it would have had alone;
a model that diverged is no longer probed after the step it diverged in.

The time spent probing is measured and stored as the probe overhead.
"""

from __future__ import annotations

import copy
import math
import time

import lightning as L
import torch

from vgbench.models.stacked import per_model_grad_squares, total_norm
from vgbench.probes.failure import log10_ratio
from vgbench.probes.taps import ProbedModel, TapRecord
from vgbench.probes.theory import predict
from vgbench import wandb_names as names


def first_last_ratio(values: list[float]) -> float:
    """values[0] / values[-1] (input-side over output-side); nan when undefined."""
    if len(values) < 1 or not values[-1] or not all(map(math.isfinite, (values[0], values[-1]))):
        return float("nan")
    return values[0] / values[-1]


# Below this a norm read in float32 may have lost digits to underflow (float32's smallest normal
# number is 1.2e-38; a norm of 1e-30 can hold elements far smaller).
FLOAT32_RESOLVED = 1e-30


# Where mean-field theory predicts a first/last ratio below 10^-28, the first state's gradient norm
# would fall below FLOAT32_RESOLVED (the last state's norm is typically 1e-2 to 1), so the init probe
# starts in float64 instead of making a float32 pass only to throw it away. A guess about cost, never
# about correctness: a float32 pass that underflows anyway is still redone in float64.
PREDICTED_UNDERFLOW_LOG10 = math.log10(FLOAT32_RESOLVED) + 2


def resolved_in_float32(stats: dict, gradients: dict) -> bool:
    """Whether one model's init-probe norms, computed in float32, are all finite and clear of underflow."""
    norms = [*stats["dL_dh_norm"], *gradients["weight_grad_norm"], gradients["grad_total_norm"]]
    return all(math.isfinite(v) and v >= FLOAT32_RESOLVED for v in norms)


def gradient_norms(model: ProbedModel) -> tuple[list[list[float]], list[float]]:
    """Per model: ||dL/dW_l|| of each probed weight, and the total gradient norm over all its parameters
    (one squared norm per parameter serves both)."""
    params = [p for p in model.parameters() if p.grad is not None]
    squares = dict(zip(map(id, params), per_model_grad_squares(params)))
    none = torch.zeros(model.models, dtype=torch.float64, device=next(model.parameters()).device)
    per_layer = torch.stack([squares[id(p)].sqrt() if id(p) in squares else none
                             for _, p in model.probe_weights()], dim=1)  # [K, layers]
    total = total_norm(list(squares.values())) if squares else none
    return per_layer.cpu().tolist(), total.cpu().tolist()


def probe_loss_gradients(model: ProbedModel, losses: torch.Tensor, scale: float = 1.0,
                          retain_graph: bool = False) -> None:
    """Back-propagate the K probe losses (times ``scale``) into the armed taps only: the parameters' ``.grad``
    is left as it was."""
    params = [p for p in model.parameters() if p.requires_grad]
    torch.autograd.grad(losses.sum() * scale, params, allow_unused=True, retain_graph=retain_graph)


TAP_KEYS = ("grad_sq_sum", "hidden_sum", "hidden_sq_sum", "hidden_count", "saturated_count", "elements",
            "dead_units", "units", "gate_sum", "gate_count")


class GradientFlowProbe(L.Callback):
    def __init__(self, init_batch: tuple[torch.Tensor, torch.Tensor], interval_steps: int, models: int = 1,
                 pretrained: bool = False):
        self.init_batch = init_batch  # one batch, the same for every model
        self.pretrained = pretrained  # weights from RBM pretraining: no mean-field prediction
        self.interval_steps = interval_steps
        self.records: list[list[dict]] = [[] for _ in range(models)]  # per model
        self.seconds = 0.0
        self._pending: list[dict | None] | None = None
        self._probing_step = False
        self._probe_loss_taps: TapRecord | None = None  # from _probe_loss_pass, until the step's gradients
        self._loss_scale = 1.0  # of the step being probed (_scale_of)

    # -- helpers -------------------------------------------------------------------------------
    @staticmethod
    def _model(pl_module) -> ProbedModel:
        return pl_module.model

    @staticmethod
    def _statistics(record: TapRecord, models: int, reduce_sum=None, world_size: int = 1,
                    loss_scale: float = 1.0) -> list[dict]:
        """Turn tap sums into per-layer statistics of each model, first adding them up over ranks (and
        taking out the ``loss_scale`` the backward pass ran with).

        The number of layers is the number of tapped hidden states (layers of an
        MLP, time steps of an RNN), which need not match ``probe_weights``.
        """
        layers = len(record.hidden_count)
        table = torch.zeros(len(TAP_KEYS), layers, models, dtype=torch.float64)
        for row, key in enumerate(TAP_KEYS):
            values = getattr(record, key)  # layer -> a [K] tensor of sums, or a count shared by the K models
            if values:
                first = next(iter(values.values()))
                table[row, list(values)] = (torch.stack(list(values.values())).to("cpu", torch.float64)
                                            if isinstance(first, torch.Tensor) else
                                            torch.tensor(list(values.values()), dtype=torch.float64)[:, None])
        if reduce_sum is not None:
            table = reduce_sum(table)
        row = dict(zip(TAP_KEYS, table))  # key -> [layers, K]
        mean = row["hidden_sum"] / row["hidden_count"].clamp_min(1)
        variance = (row["hidden_sq_sum"] / row["hidden_count"].clamp_min(1) - mean ** 2).clamp_min(0)
        grad_norm = (row["grad_sq_sum"] / world_size ** 2).sqrt() / loss_scale
        saturated = row["saturated_count"] / row["elements"].clamp_min(1)
        # Under DDP this is the mean over ranks of each rank's dead share.
        dead = row["dead_units"] / row["units"].clamp_min(1)
        gate = row["gate_sum"] / row["gate_count"].clamp_min(1)
        return [{
            "dL_dh_norm": grad_norm[:, k].tolist(),
            "activation_variance": variance[:, k].tolist(),
            "saturated_fraction": saturated[:, k].tolist() if record.saturated_count else None,
            "dead_fraction": dead[:, k].tolist() if record.dead_units else None,
            "gate_mean": gate[:, k].tolist() if record.gate_sum else None,
        } for k in range(models)]

    @staticmethod
    def _rank_sum(trainer):
        strategy = trainer.strategy
        return lambda table: strategy.reduce(table.to(strategy.root_device), reduce_op="sum").cpu()

    @staticmethod
    def _gradient_fields(model: ProbedModel) -> list[dict]:
        """Norms as back-propagated, per model; the clipped ones are filled in after clipping, if any."""
        per_layer, total = gradient_norms(model)
        return [{"weight_grad_norm": layers, "weight_grad_norm_clipped": None,
                 "grad_total_norm": norm, "grad_total_norm_clipped": None} for layers, norm in zip(per_layer, total)]

    def _finish(self, k: int, record: dict, weights_per_state: bool) -> None:
        record["dL_dh_first_last_ratio"] = first_last_ratio(record["dL_dh_norm"])
        # Only meaningful with one weight per probed state (ProbedModel.weights_per_state): an RNN's two
        # matrices (input, recurrent) are shared by every time step, and their ratio is not a depth profile.
        per_state = weights_per_state and len(record["weight_grad_norm"]) == len(record["dL_dh_norm"])
        record["weight_grad_first_last_ratio"] = (first_last_ratio(record["weight_grad_norm"]) if per_state
                                                  else float("nan"))
        self.records[k].append(record)

    @staticmethod
    def _log(pl_module, k: int, record: dict) -> None:
        if pl_module.runs_per_model[k] is None:  # no W&B run for this cell
            return
        # log10_ratio, as metrics.json has it: -inf where the first state's gradient is exactly 0 (the
        # most vanished cells; W&B keeps -inf), not NaN, which W&B charts draw as a missing point.
        metrics = {names.PROBE_LOG10_RATIO: log10_ratio(record["dL_dh_first_last_ratio"]),
                   names.PROBE_TOTAL_NORM: record["grad_total_norm"]}
        for i, value in enumerate(record["dL_dh_norm"]):
            metrics[names.probe_layer(i)] = value
        pl_module.log_model(k, metrics, step=record["step"])

    # -- resuming: the records so far travel in the checkpoint --------------------------------------
    def state_dict(self) -> dict:
        return {"records": self.records, "seconds": self.seconds}

    def load_state_dict(self, state_dict: dict) -> None:
        self.records, self.seconds = state_dict["records"], state_dict["seconds"]

    # -- at initialization -----------------------------------------------------------------------
    def on_train_start(self, trainer, pl_module) -> None:
        pl_module.after_clipping.append(lambda: self._after_clipping(pl_module))
        if any(self.records):  # resumed from a checkpoint: the init records are the ones from before
            return
        start = time.perf_counter()
        model = self._model(pl_module)
        theory = predict(model.mean_field(), self.init_batch[0], model.models, self.pretrained,
                         scored_steps=pl_module.task.probed_steps or 1)
        dtype = "float32"
        if any(value < PREDICTED_UNDERFLOW_LOG10 for value in theory.log10_first_last):  # NaN: not predicted
            dtype = "float64"
        losses, stats, gradients = self._init_pass(pl_module, getattr(torch, dtype))
        if dtype == "float32" and not all(map(resolved_in_float32, stats, gradients)):
            losses, stats, gradients = self._init_pass(pl_module, torch.float64)
            dtype = "float64"
        for k, loss in enumerate(losses):
            record = {"phase": "init", "step": 0, "epoch": 0, "loss": loss, "dtype": dtype, **stats[k],
                      **gradients[k], "theory_log10_dL_dh_first_last": theory.log10_first_last[k],
                      "theory": theory.notes[k]}
            self._finish(k, record, model.weights_per_state)
            self._log(pl_module, k, record)
        self.seconds += time.perf_counter() - start

    def _init_pass(self, pl_module, dtype: torch.dtype) -> tuple[list[float], list[dict], list[dict]]:
        """Loss, tap statistics and gradient norms of every model on the init batch, computed in ``dtype``.

        On a copy of the fresh network: that leaves the batch-norm running statistics and the
        weights' .grad of the real net alone."""
        model = copy.deepcopy(self._model(pl_module)).to(dtype)
        x, y = (t.to(pl_module.device).unsqueeze(0).expand(model.models, *t.shape).contiguous()
                for t in self.init_batch)
        x = x.to(dtype)
        y = y.to(dtype) if y.is_floating_point() else y
        task = pl_module.task
        model.taps.arm()
        # The bare model, not the DDP wrapper: same batch on every rank, no gradient all-reduce.
        outputs = model(x)
        losses = task.loss(outputs, y)
        if task.probed_steps is None:
            losses.sum().backward()  # the taps and the weight gradients at once
            taps = model.taps.disarm()
        else:
            probe_loss_gradients(model, task.probe_loss(outputs, y), retain_graph=True)
            taps = model.taps.disarm()
            # The weight gradients: the training loss's, as on a training step (the disarmed taps ignore them).
            losses.sum().backward()
        stats = self._statistics(taps, model.models)  # same batch on every rank: no reduction
        return losses.detach().tolist(), stats, self._gradient_fields(model)

    # -- during training ---------------------------------------------------------------------------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._probing_step = trainer.global_step % self.interval_steps == 0
        if not self._probing_step:
            return
        self._loss_scale = self._scale_of(trainer)
        if pl_module.task.probed_steps is None:
            self._model(pl_module).taps.arm()  # the training step's own backward fills them
        else:
            self._probe_loss_taps = self._probe_loss_pass(trainer, pl_module, batch)

    @staticmethod
    def _scale_of(trainer) -> float:
        """What the training loss is multiplied by before its backward pass: under 16-mixed the GradScaler's
        scale (read before the step, which updates it only after the optimizer step), else 1."""
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        return float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0

    def _probe_loss_pass(self, trainer, pl_module, batch) -> TapRecord:
        """The taps of a forward and backward pass of the task's probe loss on the live batch, in the
        training precision and at its loss scale, before the training step (whose backward follows the
        training loss, on the path it takes unprobed). Nothing in the net changes: the gradients reach the
        taps, not ``.grad`` (and the families with per-step outputs, RNNs, keep no running statistics). The
        batch is the step's own: augmentation, drawn inside the step, is for image data sets only (config.py)."""
        start = time.perf_counter()
        model = self._model(pl_module)
        tap_seconds = model.taps.seconds  # counted apart by the taps
        x, y = batch
        model.taps.arm()
        # The bare model, not the DDP wrapper: each rank's own batch, no gradient all-reduce.
        with torch.enable_grad(), trainer.precision_plugin.train_step_context():
            probe_loss_gradients(model, pl_module.task.probe_loss(model(x), y), self._loss_scale)
        taps = model.taps.disarm()
        self.seconds += time.perf_counter() - start - (model.taps.seconds - tap_seconds)
        return taps

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._probing_step:
            return
        start = time.perf_counter()
        model = self._model(pl_module)
        taps, self._probe_loss_taps = self._probe_loss_taps or model.taps.disarm(), None
        stats = self._statistics(taps, model.models, self._rank_sum(trainer), trainer.world_size,
                                 self._loss_scale)
        gradients = self._gradient_fields(model)
        probed = pl_module.active_at_step_start.tolist()  # a model that diverged before is not probed
        self._pending = [{"phase": "train", "step": trainer.global_step, "epoch": trainer.current_epoch,
                          **stats[k], **gradients[k]} if probed[k] else None for k in range(model.models)]
        self.seconds += time.perf_counter() - start

    def _after_clipping(self, pl_module) -> None:
        if self._pending is None:
            return
        start = time.perf_counter()
        per_layer, total = gradient_norms(self._model(pl_module))
        for k, record in enumerate(self._pending):
            if record is not None:
                record["weight_grad_norm_clipped"], record["grad_total_norm_clipped"] = per_layer[k], total[k]
        self.seconds += time.perf_counter() - start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._pending is not None:
            start = time.perf_counter()
            pending, self._pending = self._pending, None
            for k, record in enumerate(pending):
                if record is not None:
                    self._finish(k, record, self._model(pl_module).weights_per_state)
                    self._log(pl_module, k, record)
            self.seconds += time.perf_counter() - start
        self._probing_step = False

    def total_seconds(self, pl_module) -> float:
        """Callback time plus the time the taps spent inside forward and backward (all K models)."""
        return self.seconds + self._model(pl_module).taps.seconds
