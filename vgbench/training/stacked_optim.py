"""SGD and Adam for K stacked models: one learning rate per model, and models that have stopped.

Every parameter is ``[K, ...]`` (vgbench/models/stacked.py). The update of
model k is PyTorch's own rule (``torch.optim.SGD``: d = g + wd p, b = m b + d,
p -= lr b; ``torch.optim.Adam``: bias-corrected moments, p -= lr m^ / (sqrt(v^) + eps))
with model k's rate ``rates[k]``, so one group trains the learning rates of a
row together. The param group's ``lr`` is a factor on every rate (1 at the
start), which is what an LR scheduler such as ``MultiStepLR`` multiplies: a
schedule applies to every model alike. ``active[k] = False`` freezes model k
(it diverged): its weights, moments and step count stay as they were, whatever
non-finite values its gradients hold. ``active`` is not saved with the
optimizer's state: the training module derives it from its own record of
which models diverged, before every step.
"""

from __future__ import annotations

import torch

from vgbench.models.stacked import broadcast_per_model


class StackedOptimizer(torch.optim.Optimizer):
    """Updates every model in place with the same arithmetic, then puts back the frozen models' rows.

    So a model's update never depends on whether a neighbour in its group has
    stopped (the same ops run either way), and the common case, nobody
    frozen, costs nothing extra.
    """

    def __init__(self, params, rates: list[float], defaults: dict):
        super().__init__(params, {"lr": 1.0, **defaults})
        self.rates = torch.tensor(rates, dtype=torch.float64)  # each parameter gets them in its own dtype
        self.active = torch.ones(len(rates), dtype=torch.bool)
        self._per_device: dict = {}
        self._masks: dict = {}

    def _rates_for(self, like: torch.Tensor) -> torch.Tensor:
        """The rates shaped to broadcast over a [K, ...] parameter, on its device (cached)."""
        key = (like.device, like.dtype, like.dim())
        if key not in self._per_device:
            self._per_device[key] = broadcast_per_model(self.rates.to(like.dtype), like)
        return self._per_device[key]

    def _update(self, group: dict, param: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        raise NotImplementedError

    def _still_training(self, like: torch.Tensor, active: tuple[bool, ...]) -> torch.Tensor:
        """``active`` shaped to broadcast over a [K, ...] tensor like ``like``, on its device, made once per
        pattern. A mask, not indices: on a GPU under deterministic algorithms, putting rows back by index
        cost 170 us of host time per tensor (12 ms per step of a 20-model MLP, bench/README.md)."""
        key = (like.device, like.dim(), active)
        if key not in self._masks:
            self._masks[key] = broadcast_per_model(self.active, like)
        return self._masks[key]

    @torch.no_grad()
    def step(self, closure=None):
        if closure is not None:
            with torch.enable_grad():  # as torch's optimizers: the closure runs a backward pass
                loss = closure()
        else:
            loss = None
        active = tuple(self.active.tolist())
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                kept = [(t, t.clone()) for t in (param, *state.values())
                        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == len(active)] \
                    if not all(active) else []
                self._update(group, param, param.grad, state)
                for tensor, before in kept:
                    tensor.copy_(torch.where(self._still_training(tensor, active), tensor, before))
        return loss


class StackedSGD(StackedOptimizer):
    def __init__(self, params, rates: list[float], momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, rates, {"momentum": momentum, "weight_decay": weight_decay})

    def _update(self, group: dict, param: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        if group["weight_decay"]:
            grad = grad.add(param, alpha=group["weight_decay"])
        if group["momentum"]:
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = grad.clone()
            else:
                state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
            grad = state["momentum_buffer"]
        param.sub_(grad * (self._rates_for(param) * group["lr"]))


class StackedAdam(StackedOptimizer):
    def __init__(self, params, rates: list[float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, rates, {"betas": betas, "eps": eps, "weight_decay": weight_decay})

    def _update(self, group: dict, param: torch.Tensor, grad: torch.Tensor, state: dict) -> None:
        beta1, beta2 = group["betas"]
        if group["weight_decay"]:
            grad = grad.add(param, alpha=group["weight_decay"])
        if not state:
            # Per model (frozen ones stop counting), on the parameter's device: a GPU step then copies
            # nothing from the host (two copies per parameter per step, each a wait for the GPU).
            state["step"] = torch.zeros(param.shape[0], dtype=torch.float64, device=param.device)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        if state["step"].device != param.device:  # torch loads a saved "step" where it was saved, not onto the device
            state["step"] = state["step"].to(param.device)
        steps = state["step"].add_(1)
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias1 = broadcast_per_model((1 - beta1 ** steps).to(param.dtype), param)
        bias2 = broadcast_per_model((1 - beta2 ** steps).to(param.dtype), param)
        denominator = (state["exp_avg_sq"] / bias2).sqrt_().add_(group["eps"])
        param.addcdiv_(state["exp_avg"] * (self._rates_for(param) * group["lr"] / bias1), denominator, value=-1)


OPTIMIZERS = {"sgd": StackedSGD, "adam": StackedAdam}
