"""Test helper: the gradients an optimiser step receives.

Compare these, not the parameters after AdamW: Adam divides each element by its own magnitude,
so an element whose gradient is at the fp32 rounding level (~1e-6 of the largest) moves by a full
+-lr either way, whatever the summation order that computed it.
"""

import torch


def first_step_gradients(trainer) -> list[torch.Tensor]:
    """Filled with the gradients that the trainer's first optimiser step receives."""
    captured: list[torch.Tensor] = []

    def capture(optimizer, args, kwargs):
        if not captured:
            captured.extend(p.grad.clone() for p in trainer.model.parameters())

    trainer.optimizer.register_step_pre_hook(capture)
    return captured
