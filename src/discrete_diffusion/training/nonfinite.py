"""Updates that never keep a non-finite weight, and the check of loaded weights.

`FiniteUpdate.step()` runs one optimizer step and keeps it only if every parameter and every
optimizer state tensor is still finite; otherwise both return to what they were before the
step. A finite gradient does not guarantee a finite result (a learning rate of 1e30 turns
finite weights into inf), so the result itself is checked. The check is one fused max-abs
reduction per device and one host sync per update (NaN propagates through the maximum); the
restore needs a copy of the parameters and the optimizer state taken before the step, kept in
buffers allocated once (memory: one more copy of the optimizer's tensors).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor

# a log interval with more than this share of skipped updates prints a warning
SKIP_WARNING_SHARE = 0.01


class NonFiniteTraining(ValueError):
    """Training stopped: too many updates in a row were non-finite (usually the learning rate
    is far too high). A ValueError, so that the CLI reports it as one line."""

    def __init__(self, update: int, in_a_row: int, skipped: int) -> None:
        super().__init__(
            f"training stopped at update {update}: the last {in_a_row} updates were all "
            f"non-finite (gradient or weights) and were skipped, {skipped} in all; lower "
            f"train.lr or set train.grad_clip (no weight was changed by a non-finite update; "
            f"train.max_consecutive_skips=0 never stops)")


def skip_warning(updates: int, skipped: int, since: int, total_skipped: int,
                 total_updates: int) -> str | None:
    """The warning for `skipped` of `updates` updates since step `since`, or None when they
    are at most `SKIP_WARNING_SHARE` of them."""
    if updates <= 0 or skipped <= SKIP_WARNING_SHARE * updates:
        return None
    return (f"warning: {skipped} of {updates} updates skipped as non-finite since step {since} "
            f"({total_skipped} of {total_updates} in all)")


def _by_device(tensors: list[Tensor]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(tensors):
        groups.setdefault((t.device, t.dtype), []).append(i)
    return groups


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every element of every floating tensor is finite (one reduction per device)."""
    floats = [t.detach() for t in tensors if t.is_floating_point() and t.numel()]
    if not floats:
        return True
    maxima = []
    for index in _by_device(floats).values():
        group = [floats[i] for i in index]
        # the fused per-tensor max |x| that clip_grad_norm_ also uses; NaN propagates
        maxima.append(torch.stack(torch._foreach_norm(group, math.inf)).max().float().cpu())
    return bool(torch.isfinite(torch.stack(maxima)).all())


def first_non_finite(tensors: Mapping[str, Tensor]) -> str | None:
    """The name of the first floating tensor holding an inf or NaN, or None."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def _copy_all(targets: list[Tensor], sources: list[Tensor]) -> None:
    for index in _by_device(targets).values():
        torch._foreach_copy_([targets[i] for i in index], [sources[i] for i in index])


class FiniteUpdate:
    """One optimizer step that is undone when it leaves a non-finite parameter or state."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self._backup: list[Tensor] = []
        self._sources: list[Tensor] = []

    def _params(self) -> list[Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def step(self) -> bool:
        """`optimizer.step()`; returns whether it was kept (False: everything restored)."""
        params = self._params()
        state = self.optimizer.state
        # shallow copies: the tensors stay the optimizer's, non-tensor values (int steps) too
        saved = [(p, dict(state[p]) if p in state else None) for p in params]
        sources = params + [v for _, s in saved if s for v in s.values()
                            if isinstance(v, Tensor)]
        with torch.no_grad():
            if [id(t) for t in sources] != [id(t) for t in self._sources]:
                self._backup = [t.detach().clone() for t in sources]
                self._sources = sources
            else:
                _copy_all(self._backup, sources)
            self.optimizer.step()
            after = params + [v for p in params for v in state.get(p, {}).values()
                              if isinstance(v, Tensor)]
            if all_finite(after):
                return True
            for p, entries in saved:
                if entries is None:
                    state.pop(p, None)
                else:
                    state[p] = entries
            _copy_all(sources, self._backup)
        return False
