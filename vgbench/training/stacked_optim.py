"""SGD and Adam for K stacked models: one learning rate per model, and models that have stopped.

Every parameter is ``[K, ...]`` (vgbench/models/stacked.py). The update of
model k is PyTorch's own rule (``torch.optim.SGD``: d = g + wd p, b = m b + d,
p -= lr b; ``torch.optim.Adam``: bias-corrected moments, p -= lr m^ / (sqrt(v^) + eps))
with model k's rate ``rates[k]``, so one group trains the learning rates of a
row together. The param group's ``lr`` is a factor on every rate (1 at the
start), which is what an LR scheduler such as ``MultiStepLR`` multiplies: a
schedule applies to every model alike. ``active[k] = False`` freezes model k
(it diverged): its weights, moments and step count stay as they were, whatever
non-finite values its gradients hold.
"""

from __future__ import annotations

import torch


class StackedOptimizer(torch.optim.Optimizer):
    def __init__(self, params, rates: list[float], defaults: dict):
        super().__init__(params, {"lr": 1.0, **defaults})
        self.rates = torch.tensor(rates, dtype=torch.float32)
        self.active = torch.ones(len(rates), dtype=torch.bool)

    def _per_model(self, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A [K] vector shaped to broadcast over a [K, ...] parameter, on its device."""
        return values.to(like.device).view(-1, *([1] * (like.dim() - 1)))

    def _apply(self, param: torch.Tensor, new: torch.Tensor, active: torch.Tensor) -> None:
        param.copy_(torch.where(active, new, param))

    def state_dict(self):
        state = super().state_dict()
        state["active"] = self.active.clone()
        return state

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        self.active = state_dict.pop("active").clone()
        super().load_state_dict(state_dict)


class StackedSGD(StackedOptimizer):
    def __init__(self, params, rates: list[float], momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(params, rates, {"momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                active = self._per_model(self.active, param)
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                if group["momentum"]:
                    state = self.state[param]
                    if "momentum_buffer" not in state:
                        state["momentum_buffer"] = torch.where(active, grad, torch.zeros_like(grad))
                    else:
                        buffer = state["momentum_buffer"]
                        buffer.copy_(torch.where(active, buffer * group["momentum"] + grad, buffer))
                    grad = state["momentum_buffer"]
                rate = self._per_model(self.rates, param) * group["lr"]
                self._apply(param, param - rate * grad, active)
        return loss


class StackedAdam(StackedOptimizer):
    def __init__(self, params, rates: list[float], betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, rates, {"betas": betas, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                active = self._per_model(self.active, param)
                grad = param.grad
                if group["weight_decay"]:
                    grad = grad.add(param, alpha=group["weight_decay"])
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros(param.shape[0], dtype=torch.float64)  # per model
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                steps = state["step"].add_(self.active.to(torch.float64))  # frozen models do not count
                exp_avg = torch.where(active, state["exp_avg"].lerp(grad, 1 - beta1), state["exp_avg"])
                exp_avg_sq = torch.where(active, state["exp_avg_sq"] * beta2 + (1 - beta2) * grad * grad,
                                         state["exp_avg_sq"])
                state["exp_avg"].copy_(exp_avg)
                state["exp_avg_sq"].copy_(exp_avg_sq)
                bias1 = self._per_model((1 - beta1 ** steps).float(), param)
                bias2 = self._per_model((1 - beta2 ** steps).float(), param)
                rate = self._per_model(self.rates, param) * group["lr"]
                denominator = (exp_avg_sq / bias2).sqrt() + group["eps"]
                self._apply(param, param - rate / bias1 * exp_avg / denominator, active)
        return loss


OPTIMIZERS = {"sgd": StackedSGD, "adam": StackedAdam}
