"""Input checks of the process: states, times, spans, denoiser outputs, shapes.

Each check raises a one-line ValueError naming the argument and returns the input in the form
the maths uses (LongTensors on the right device). Checks that read tensor values cost one
device sync each (`min_max`); the sampling loop makes them once, before its first step.
"""

from __future__ import annotations

import torch
from torch import Tensor


def is_int(v: object) -> bool:
    """True for a Python int that is not a bool."""
    return isinstance(v, int) and not isinstance(v, bool)


def min_max(x: Tensor) -> tuple[int, int]:
    """Smallest and largest value of an integer tensor ((0, 0) if empty), with one device sync."""
    if x.numel() == 0:
        return 0, 0
    low, high = torch.aminmax(x.reshape(-1))
    return tuple(int(v) for v in torch.stack([low, high]).tolist())


def check_states(x: Tensor, name: str, num_classes: int, like: Tensor | None = None) -> Tensor:
    """x as a LongTensor [B, ...] of states in 0..K-1 (shaped like `like` when given)."""
    if not isinstance(x, Tensor) or x.dtype in (torch.bool,) or x.is_floating_point() \
            or x.is_complex():
        raise ValueError(f"{name} must be an integer tensor [B, ...]")
    if x.dim() < 1:
        raise ValueError(f"{name} must have a batch dimension, got a scalar")
    if like is not None and x.shape != like.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(like.shape)}")
    low, high = min_max(x)
    if low < 0 or high >= num_classes:
        raise ValueError(f"{name} values must lie in [0, {num_classes}), got [{low}, {high}]")
    return x.long()


def check_times(t: int | Tensor, x: Tensor, num_steps: int, low: int = 1) -> Tensor:
    """t (an int, or an integer tensor [B] or []) as a LongTensor [B] on the device of x,
    checked to lie in low..T."""
    T, batch = num_steps, x.shape[0]
    if is_int(t):
        if not low <= t <= T:
            raise ValueError(f"t must lie in {low}..{T}, got {t}")
        return torch.full((batch,), int(t), dtype=torch.long, device=x.device)
    if not isinstance(t, Tensor) or t.is_floating_point() or t.dtype == torch.bool:
        raise ValueError(f"t must be an int or an integer tensor [B], got {type(t).__name__}")
    if t.dim() == 0:
        t = t.expand(batch)
    if t.shape != (batch,):
        raise ValueError(f"t must have shape [{batch}], got {tuple(t.shape)}")
    t_min, t_max = min_max(t)
    if t_min < low or t_max > T:
        raise ValueError(f"t must lie in {low}..{T}, got [{t_min}, {t_max}]")
    return t.long().to(x.device)


def check_span(
    x_t: Tensor, t: int | Tensor, step_size: int, s: int | Tensor | None, num_steps: int
) -> tuple[Tensor, Tensor]:
    """(s, t) as LongTensors [B] with 0 <= s < t <= T; s = t - step_size unless given."""
    t = check_times(t, x_t, num_steps, low=1)
    if s is None:
        if not is_int(step_size) or step_size < 1:
            raise ValueError(f"step_size must be a positive integer, got {step_size!r}")
        s = t - step_size
    else:
        if step_size != 1:
            raise ValueError("give either step_size or s, not both")
        s = check_times(s, x_t, num_steps, low=0)
    if bool(((s < 0) | (s >= t)).any()):
        raise ValueError("need 0 <= s < t (s = t - step_size) for every example")
    return s, t


def check_logits(logits: Tensor, x_t: Tensor, num_classes: int) -> None:
    """A denoiser output must be float [*x_t.shape, K] (no device sync)."""
    expected = (*x_t.shape, num_classes)
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise ValueError("denoiser output must be a float tensor of logits [B, ..., K]")
    if tuple(logits.shape) != expected:
        raise ValueError(f"denoiser output has shape {tuple(logits.shape)}, expected "
                         f"{expected} (x_t shape + K = {num_classes})")


def check_probs(probs: Tensor, x_t: Tensor, num_classes: int) -> Tensor:
    """Soft x_0: probabilities [*x_t.shape, K], non-negative, each row summing to one."""
    check_logits(probs, x_t, num_classes)
    if bool((probs < 0).any()) or float((probs.sum(-1) - 1).abs().max()) > 1e-4:
        raise ValueError("soft x_0 must hold probabilities [B, ..., K] summing to one")
    return probs


def check_shape(shape: tuple[int, ...] | torch.Size) -> tuple[int, ...]:
    """A sample shape [B, ...]: a non-empty tuple of positive ints."""
    if not isinstance(shape, (tuple, list, torch.Size)) or len(shape) < 1 \
            or not all(is_int(n) and n >= 1 for n in shape):
        raise ValueError(f"shape must be a non-empty tuple of positive ints, got {shape!r}")
    return tuple(shape)


def check_fixed(
    fixed: tuple[Tensor, Tensor] | None,
    shape: tuple[int, ...],
    num_classes: int,
    device: torch.device,
) -> tuple[Tensor, Tensor] | None:
    """Held positions (bool mask [*shape], values [*shape]) on `device`; values where the mask
    is False are ignored, those where it is True must be states in 0..K-1."""
    if fixed is None:
        return None
    if not isinstance(fixed, (tuple, list)) or len(fixed) != 2:
        raise ValueError("fixed must be a pair (bool mask, values)")
    mask, values = fixed
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != shape:
        raise ValueError(f"fixed mask must be a bool tensor of shape {shape}")
    if not isinstance(values, Tensor) or values.shape != shape:
        raise ValueError(f"fixed values must be a tensor of shape {shape}")
    values = torch.where(mask, values, torch.zeros_like(values))
    check_states(values, "fixed values", num_classes)
    return mask.to(device), values.long().to(device)
