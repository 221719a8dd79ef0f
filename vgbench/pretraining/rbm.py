"""A restricted Boltzmann machine trained by contrastive divergence.

One layer of a deep belief net (Hinton, Osindero & Teh 2006): binary
(Bernoulli) hidden units over either binary visible units or, for real-valued
standardized inputs, Gaussian visible units with unit variance (Hinton 2010,
"A practical guide to training restricted Boltzmann machines", section 13.2).

Energies, with W of shape (hidden, visible), visible bias b, hidden bias c::

    Bernoulli visible: E(v, h) = -b.v - c.h - h.W.v
    Gaussian visible:  E(v, h) = |v - b|^2 / 2 - c.h - h.W.v

so p(h_j = 1 | v) = sigmoid(c_j + W_j.v) in both cases, which is exactly what
``nn.Linear(visible, hidden)`` followed by a sigmoid computes when it holds
``weight = W`` and ``bias = c``: the RBM unrolls into one sigmoid layer.

The machine is updated by hand (no autograd): CD-k (Hinton 2002) or
persistent CD (Tieleman 2008), with momentum and L2 weight decay on the
weights as in the guide. Every random draw comes from the ``torch.Generator``
given at construction, never from the global RNG, so a seed fixes the result.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Clamp for the data's "on" fraction when the visible biases start at
# log(p / (1 - p)) (guide, section 8): a feature that is always 0 or always 1
# would otherwise give an infinite bias.
_BIAS_PROBABILITY_FLOOR = 1e-3


class RBM:
    """Parameters, conditionals, free energy and the CD-k / PCD update of one RBM.

    ``weight`` is (hidden, visible) so that it can be copied as it is into
    ``nn.Linear(visible, hidden).weight``; ``hidden_bias`` goes to that
    layer's ``bias``. ``fantasy_visible`` holds the persistent chain's visible
    states (PCD's fantasy particles) once a persistent update has run.
    """

    def __init__(self, num_visible: int, num_hidden: int, *, gaussian_visible: bool,
                 generator: torch.Generator, init_std: float = 0.01,
                 dtype: torch.dtype = torch.float32):
        # Small random weights and zero biases are the guide's starting point
        # (section 8: N(0, 0.01^2)); ``init_visible_bias`` then sets b from data.
        device = generator.device
        self.gaussian_visible = gaussian_visible
        self.generator = generator
        self.weight = init_std * torch.randn(num_hidden, num_visible, generator=generator,
                                             device=device, dtype=dtype)
        self.visible_bias = torch.zeros(num_visible, device=device, dtype=dtype)
        self.hidden_bias = torch.zeros(num_hidden, device=device, dtype=dtype)
        self._reset_optimizer_state()

    @classmethod
    def from_parameters(cls, weight: torch.Tensor, visible_bias: torch.Tensor,
                        hidden_bias: torch.Tensor, *, gaussian_visible: bool,
                        generator: torch.Generator) -> "RBM":
        """An RBM holding copies of given parameters (for tests and for unrolled stacks)."""
        num_hidden, num_visible = weight.shape
        if visible_bias.shape != (num_visible,) or hidden_bias.shape != (num_hidden,):
            raise ValueError(f"biases {tuple(visible_bias.shape)}, {tuple(hidden_bias.shape)} do not fit "
                             f"a weight of shape {tuple(weight.shape)} (hidden, visible)")
        rbm = cls.__new__(cls)
        rbm.gaussian_visible = gaussian_visible
        rbm.generator = generator
        rbm.weight = weight.detach().clone()
        rbm.visible_bias = visible_bias.detach().clone()
        rbm.hidden_bias = hidden_bias.detach().clone()
        rbm._reset_optimizer_state()
        return rbm

    def _reset_optimizer_state(self) -> None:
        self.weight_velocity = torch.zeros_like(self.weight)
        self.visible_bias_velocity = torch.zeros_like(self.visible_bias)
        self.hidden_bias_velocity = torch.zeros_like(self.hidden_bias)
        self.fantasy_visible: torch.Tensor | None = None

    @property
    def num_visible(self) -> int:
        return self.weight.shape[1]

    @property
    def num_hidden(self) -> int:
        return self.weight.shape[0]

    def init_visible_bias(self, data: torch.Tensor) -> None:
        """Start b where the hidden units need not explain the data's marginals.

        Bernoulli: b_i = log(p_i / (1 - p_i)), p_i the fraction of training
        vectors with unit i on (guide, section 8). Gaussian: b_i = mean of
        feature i, the mean of p(v | h = 0).
        """
        mean = data.mean(dim=0)
        if self.gaussian_visible:
            self.visible_bias = mean.clone()
        else:
            p = mean.clamp(_BIAS_PROBABILITY_FLOOR, 1 - _BIAS_PROBABILITY_FLOOR)
            self.visible_bias = torch.log(p / (1 - p))

    # Conditionals and sampling -------------------------------------------------

    def hidden_probabilities(self, visible: torch.Tensor) -> torch.Tensor:
        """p(h = 1 | v), one row per sample; the same kernel as nn.Linear + sigmoid."""
        return torch.sigmoid(F.linear(visible, self.weight, self.hidden_bias))

    def visible_mean(self, hidden: torch.Tensor) -> torch.Tensor:
        """E[v | h]: p(v = 1 | h) for Bernoulli units, the Gaussian's mean b + W^T h otherwise."""
        activation = hidden @ self.weight + self.visible_bias
        return activation if self.gaussian_visible else torch.sigmoid(activation)

    def sample_hidden(self, visible: torch.Tensor) -> torch.Tensor:
        return torch.bernoulli(self.hidden_probabilities(visible), generator=self.generator)

    def sample_visible(self, hidden: torch.Tensor) -> torch.Tensor:
        mean = self.visible_mean(hidden)
        if self.gaussian_visible:
            noise = torch.randn(mean.shape, generator=self.generator, device=mean.device, dtype=mean.dtype)
            return mean + noise  # unit variance
        return torch.bernoulli(mean, generator=self.generator)

    # Monitoring ------------------------------------------------------------------

    def free_energy(self, visible: torch.Tensor) -> torch.Tensor:
        """F(v) = -log sum_h exp(-E(v, h)), one value per sample.

        With the hidden units summed out: F(v) = -b.v - sum_j softplus(c_j + W_j.v)
        (Bernoulli visible) or |v - b|^2 / 2 - sum_j softplus(c_j + W_j.v)
        (Gaussian visible). Comparing mean F on training and held-out data is
        the guide's overfitting monitor (section 6), since log Z cancels.
        """
        hidden_term = F.softplus(F.linear(visible, self.weight, self.hidden_bias)).sum(dim=1)
        if self.gaussian_visible:
            visible_term = 0.5 * (visible - self.visible_bias).pow(2).sum(dim=1)
        else:
            visible_term = -(visible @ self.visible_bias)
        return visible_term - hidden_term

    def reconstruction_error(self, visible: torch.Tensor) -> torch.Tensor:
        """Mean squared error of v against its mean-field reconstruction E[v | p(h | v)].

        The guide's (section 5) cheap progress signal: not the objective CD
        follows, but it should fall during the early epochs.
        """
        reconstruction = self.visible_mean(self.hidden_probabilities(visible))
        return (visible - reconstruction).pow(2).mean()

    # Learning --------------------------------------------------------------------

    @torch.no_grad()
    def contrastive_divergence_update(self, visible: torch.Tensor, *, learning_rate: float, k: int = 1,
                                      momentum: float = 0.0, weight_decay: float = 0.0,
                                      persistent: bool = False) -> None:
        """One CD-k (or PCD-k) step on a minibatch, following Hinton's guide.

        Positive phase: <v0 p(h | v0)> over the batch, i.e. hidden
        *probabilities* for the statistics (guide 3.3), while the chain starts
        from a binary *sample* h0 ~ p(h | v0), the first draw from the
        generator (guide 3.1: sampled hidden states are an information
        bottleneck).

        Negative phase, CD-k: k Gibbs steps from h0. Visible units are set to
        their mean E[v | h] rather than sampled (guide 3.2; for Gaussian units
        the noise-free mean), intermediate hidden units are sampled, and the
        last hidden update uses probabilities: statistics <v_k p(h | v_k)>.

        Negative phase, PCD-k (Tieleman 2008): the chain runs from the fantasy
        particles left by the previous update instead of from the data, with
        both layers *sampled* at every step (h ~ p(h | v), then v ~ p(v | h)) so
        that it stays a Markov chain of the model; statistics are
        <v_k p(h | v_k)>. The particles start as a copy of the first batch and
        keep their own count; each phase is averaged over its own rows.

        Update, for every parameter theta (guide 9-10):
        velocity = momentum * velocity + learning_rate * (grad - weight_decay * theta)
        and theta += velocity, with the L2 term on W only (not on the biases).
        """
        if k < 1:
            raise ValueError(f"k={k} Gibbs steps; need at least 1")
        positive_hidden = self.hidden_probabilities(visible)

        if persistent:
            if self.fantasy_visible is None or self.fantasy_visible.shape[1] != self.num_visible:
                self.fantasy_visible = visible.clone()
            negative_visible = self.fantasy_visible
            for _ in range(k):
                negative_visible = self.sample_visible(self.sample_hidden(negative_visible))
            self.fantasy_visible = negative_visible
        else:
            hidden = torch.bernoulli(positive_hidden, generator=self.generator)
            for step in range(k):
                negative_visible = self.visible_mean(hidden)
                if step < k - 1:
                    hidden = self.sample_hidden(negative_visible)
        negative_hidden = self.hidden_probabilities(negative_visible)

        positive_count, negative_count = visible.shape[0], negative_visible.shape[0]
        weight_gradient = (positive_hidden.T @ visible / positive_count
                           - negative_hidden.T @ negative_visible / negative_count)
        visible_bias_gradient = visible.mean(dim=0) - negative_visible.mean(dim=0)
        hidden_bias_gradient = positive_hidden.mean(dim=0) - negative_hidden.mean(dim=0)

        self.weight_velocity.mul_(momentum).add_(weight_gradient - weight_decay * self.weight,
                                                 alpha=learning_rate)
        self.visible_bias_velocity.mul_(momentum).add_(visible_bias_gradient, alpha=learning_rate)
        self.hidden_bias_velocity.mul_(momentum).add_(hidden_bias_gradient, alpha=learning_rate)
        self.weight += self.weight_velocity
        self.visible_bias += self.visible_bias_velocity
        self.hidden_bias += self.hidden_bias_velocity
        if not torch.isfinite(self.weight).all():
            # Too large a step (often a Gaussian visible layer, guide 13.2) makes the
            # chain explode; fail here, not later inside torch.bernoulli.
            raise FloatingPointError("the RBM's weights became non-finite: lower the learning rate or momentum")
