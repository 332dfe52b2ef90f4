"""The adaptive entropy coefficient of Skywork-OR1 (arXiv 2505.22312), with TRL's field names.

After every optimisation step the coefficient of the entropy bonus moves by a fixed step
towards holding a target entropy::

    coef <- min(coef + entropy_coef_delta, entropy_coef_max)   if entropy <= entropy_target
    coef <- max(coef - entropy_coef_delta, entropy_coef_min)   otherwise

starting from ``PolicyLossConfig.entropy_coeff``. The coefficient lives on the device as a 0-dim
tensor and is updated there, so a trainer can pass :attr:`AdaptiveEntropyCoef.value` to
:func:`~toy_entropy.algorithms.losses.compute_policy_loss` (``entropy_coeff=``) without a host sync;
the exact experiments call it with floats.
"""

from __future__ import annotations

import torch

from toy_entropy.algorithms.losses.config import PolicyLossConfig
from toy_entropy.algorithms.losses.distributed import as_collectives

__all__ = ["AdaptiveEntropyCoef"]


class AdaptiveEntropyCoef:
    """A bang-bang controller of the entropy-bonus coefficient (module docstring).

    Args:
        config: a loss config with ``use_adaptive_entropy=True`` (its ``entropy_coeff`` is the
            start, ``entropy_target`` in nats, ``entropy_coef_delta`` / ``_min`` / ``_max``).
        device: where the coefficient lives.
    """

    def __init__(self, config: PolicyLossConfig, device: torch.device | str = "cpu") -> None:
        if not config.use_adaptive_entropy:
            raise ValueError(
                "AdaptiveEntropyCoef: the config must have use_adaptive_entropy=True, got False"
            )
        self.config = config
        self.value = torch.tensor(config.entropy_coeff, dtype=torch.float64, device=device)
        """0-dim float64 tensor: the coefficient for the next optimisation step."""

    @torch.no_grad()
    def update(self, entropy: torch.Tensor | float, dist: object = None) -> torch.Tensor:
        """Move the coefficient after a step whose measured entropy was ``entropy``.

        Args:
            entropy: the step's mean per-token entropy in nats: a float, or a 0-dim tensor that
                is this rank's additive share (e.g. the sum over its micro-batches of
                ``loss/entropy``, normalised by the whole batch), summed over ranks here.
            dist: None for one process, else as
            :func:`~toy_entropy.algorithms.losses.select_tokens`.

        Returns:
            The new coefficient (:attr:`value`), a 0-dim tensor.
        """
        cfg = self.config
        measured = torch.as_tensor(entropy, dtype=torch.float64, device=self.value.device)
        if dist is not None:
            measured = as_collectives(dist).all_gather(measured.reshape(1)).sum()
        up = (self.value + cfg.entropy_coef_delta).clamp(max=cfg.entropy_coef_max)
        down = (self.value - cfg.entropy_coef_delta).clamp(min=cfg.entropy_coef_min)
        self.value = torch.where(measured <= cfg.entropy_target, up, down)
        return self.value

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The coefficient, for checkpoints."""
        return {"value": self.value.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.value = state["value"].to(self.value)
