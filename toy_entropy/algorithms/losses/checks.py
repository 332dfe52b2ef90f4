"""Input checks of the (B, T) token tensors, from shapes and dtypes only (no device reads)."""

from __future__ import annotations

import torch

__all__ = ["check_token_tensors"]


def check_token_tensors(caller: str, response_mask: torch.Tensor, **values: torch.Tensor) -> None:
    """Check that ``response_mask`` and every named value are ``(B, T)`` tensors on one device.

    Values must be floating point; the mask may be bool, integer or floating (nonzero = valid).
    Raises TypeError / ValueError naming the argument, what it got and what is allowed.
    """
    if not isinstance(response_mask, torch.Tensor):
        raise TypeError(
            f"{caller}: response_mask must be a torch.Tensor, got {type(response_mask)}"
        )
    if response_mask.dim() != 2:
        raise ValueError(
            f"{caller}: response_mask must be (batch, response_length), got shape "
            f"{tuple(response_mask.shape)}"
        )
    for name, value in values.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(value)}")
        if value.shape != response_mask.shape:
            raise ValueError(
                f"{caller}: {name} shape {tuple(value.shape)} must equal response_mask shape "
                f"{tuple(response_mask.shape)} (batch, response_length)"
            )
        if not value.is_floating_point():
            raise ValueError(f"{caller}: {name} must be floating point, got {value.dtype}")
        if value.device != response_mask.device:
            raise ValueError(
                f"{caller}: {name} is on {value.device} but response_mask is on "
                f"{response_mask.device}; all tensors must be on one device"
            )
