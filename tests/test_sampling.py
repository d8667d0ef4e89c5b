"""The sampling loop (`sampling.run_chain`), its step rules and `D3PM.sample(start=...)`."""

from __future__ import annotations

import brute
import pytest
import torch
from conftest import PROCESSES
from torch import nn

import discrete_diffusion as dd
from discrete_diffusion import sampling, times
from discrete_diffusion.data.base import DataInfo
from discrete_diffusion.methods import diffusion

MASK = torch.tensor([[True, False, False], [False, False, True]])
VALUES = torch.tensor([[1, 0, 0], [0, 0, 2]])


def _confident(target: torch.Tensor, k: int):
    """A denoiser sure of `target` (logits +1e4 there) whatever it sees."""
    def denoiser(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return 1e4 * torch.nn.functional.one_hot(target.expand_as(x_t), k).float()
    return denoiser


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize(("t", "steps"), [(5, None), (3, None), (4, 2), (1, None)])
def test_sampling_from_a_state_reaches_a_confident_target(
    name: str, t: int, steps: int | None
) -> None:
    proc = PROCESSES[name]()
    k = proc.num_classes
    target = torch.arange(6).remainder(k).view(2, 3)
    gen = torch.Generator().manual_seed(0)
    x_t = proc.q_sample(target, t, gen)  # a state the target can reach
    x, traj = proc.sample(_confident(target, k), start=(t, x_t), steps=steps, generator=gen,
                          return_trajectory=True)
    assert torch.equal(x, target)
    below = [g for g in proc.timestep_grid(steps=steps) if g < t]
    assert [s for s, _ in traj] == [t, *below[::-1]]
    assert torch.equal(traj[0][1], x_t) and torch.equal(traj[-1][1], x)


@pytest.mark.parametrize("name", sorted(PROCESSES))
@pytest.mark.parametrize("kwargs", [{}, {"steps": 2},
                                    {"fixed": (MASK, VALUES), "argmax_last": True}])
def test_start_at_T_is_the_plain_sampler(name: str, kwargs: dict) -> None:
    proc = PROCESSES[name]()
    den = brute.RandomDenoiser(proc.num_classes, proc.num_steps)
    a, path_a = proc.sample(den, (2, 3), generator=torch.Generator().manual_seed(5),
                            return_trajectory=True, **kwargs)
    gen = torch.Generator().manual_seed(5)
    x_T = sampling.prior_sample(proc, (2, 3), gen)
    b, path_b = proc.sample(den, (2, 3), start=(proc.num_steps, x_T), generator=gen,
                            return_trajectory=True, **kwargs)
    assert torch.equal(a, b)
    assert [t for t, _ in path_a] == [t for t, _ in path_b]
    assert all(torch.equal(u, v) for (_, u), (_, v) in zip(path_a, path_b))


def test_start_holds_fixed_positions_at_every_step() -> None:
    proc = PROCESSES["uniform"]()
    den = brute.RandomDenoiser(proc.num_classes, proc.num_steps)
    seen = []

    def watched(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x_t.clone())
        return den(x_t, t)

    x_t = torch.full((2, 3), 3)
    _, traj = proc.sample(watched, start=(4, x_t), fixed=(MASK, VALUES), return_trajectory=True,
                          generator=torch.Generator().manual_seed(0))
    assert len(seen) == 4 and len(traj) == 5
    assert all(torch.equal(x[MASK], VALUES[MASK]) for x in seen + [x for _, x in traj])


def test_start_at_zero_takes_no_step() -> None:
    proc = PROCESSES["absorbing"]()
    x_0 = torch.tensor([[0, 1, 2]])

    def never(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        raise AssertionError("no denoiser call expected")

    x, traj = proc.sample(never, start=(0, x_0), return_trajectory=True)
    assert torch.equal(x, x_0) and [t for t, _ in traj] == [0]


def test_run_chain_walks_the_grid_with_any_step_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    proc = PROCESSES["uniform"]()
    calls, done = [], []

    def shift(process, denoiser, x_t, s, t, generator, argmax=False):
        calls.append((int(s[0]), int(t[0]), argmax))
        return (x_t + 1) % process.num_classes

    x, traj = sampling.run_chain(proc, None, torch.zeros(2, 3, dtype=torch.long), [0, 2, 5],
                                 shift, fixed=(MASK, VALUES), argmax_last=True,
                                 progress=lambda i, n: done.append((i, n)),
                                 return_trajectory=True)
    assert calls == [(2, 5, False), (0, 2, True)] and done == [(1, 2), (2, 2)]
    assert [t for t, _ in traj] == [5, 2, 0]
    assert torch.equal(x, torch.where(MASK, VALUES, torch.full((2, 3), 2)))
    # a rule named in the registry is what `D3PM.sample(sampler=...)` runs
    monkeypatch.setitem(sampling.STEP_RULES, "shift", shift)
    calls.clear()
    y = proc.sample(None, (2, 3), steps=2, sampler="shift",
                    generator=torch.Generator().manual_seed(0))
    assert [c[:2] for c in calls] == [(3, 5), (0, 3)] and y.shape == (2, 3)


def test_unknown_sampler_is_a_one_line_error() -> None:
    proc = PROCESSES["uniform"]()
    with pytest.raises(ValueError, match=r"^sampler must be one of \['ancestral', .*, got 'tau'$"):
        proc.sample(brute.RandomDenoiser(4, 5), (2, 3), sampler="tau")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": (6, torch.zeros(2, 3, dtype=torch.long))}, "start step"),
        ({"start": (2.0, torch.zeros(2, 3, dtype=torch.long))}, "start step"),
        ({"start": (2, torch.full((2, 3), 4))}, r"start x_t values must lie in \[0, 4\)"),
        ({"start": (2, torch.zeros(2, 3))}, "start x_t must be an integer tensor"),
        ({"start": (2, torch.zeros(3, 3, dtype=torch.long)), "shape": (2, 3)},
         "start x_t has shape"),
        ({"start": 2}, "start must be a pair"),
        ({"shape": None}, "shape"),
    ],
)
def test_bad_start_raises_clear_errors(kwargs: dict, message: str) -> None:
    proc = PROCESSES["uniform"]()
    with pytest.raises(ValueError, match=message):
        proc.sample(brute.RandomDenoiser(4, 5), **kwargs)


@pytest.mark.parametrize("grid", [[], [0, 0, 5], [3, 1], [0, 6], [-1, 2], [0, 2.0]])
def test_run_chain_rejects_bad_grids(grid: list) -> None:
    proc = PROCESSES["uniform"]()
    with pytest.raises(ValueError, match="grid must be increasing ints"):
        sampling.run_chain(proc, brute.RandomDenoiser(4, 5), torch.zeros(1, 2, dtype=torch.long),
                           grid)


class _Table(nn.Module):
    """A tiny denoiser model: logits from a table indexed by (t, x_t)."""

    def __init__(self, k: int, steps: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(steps + 1, k, k,
                                              generator=torch.Generator().manual_seed(0)))

    def forward(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.table[t[:, None], x_t]


@pytest.mark.parametrize("transition", ["uniform", "absorbing"])
def test_method_reconstructs_through_the_one_sampler(transition: str) -> None:
    """`DiffusionMethod.sample(start=...)` (the `d3pm sample --corrupt` path) is `D3PM.sample`:
    from (T, x_T ~ p(x_T)) it equals the plain sampler for the same generator."""
    info = DataInfo(num_classes=4, example_shape=(5,), unit="char")
    method = diffusion.build(diffusion.Config(transition=transition, num_steps=6,
                                              schedule="linear", beta_start=0.1,
                                              beta_stop=0.5), info)
    model = _Table(method.num_classes, method.num_steps)
    plain = method.sample(model, 3, steps=3, generator=torch.Generator().manual_seed(2))
    gen = torch.Generator().manual_seed(2)
    x_T = sampling.prior_sample(method.process, (3, 5), gen)
    assert torch.equal(method.sample(model, 3, steps=3, generator=gen, start=(6, x_T)), plain)
    x_t = method.corrupt(plain, 2, generator=gen)
    x, path = method.sample(model, 3, steps=3, generator=gen, start=(2, x_t), trajectory=True)
    assert [t for t, _ in path] == [2, 0] and x.shape == (3, 5)


def test_timestep_grid_is_the_process_grid() -> None:
    proc = dd.D3PM(dd.transitions.Uniform(3), dd.schedules.cosine(10))
    assert times.timestep_grid(10, steps=3) == proc.timestep_grid(steps=3) == [0, 3, 7, 10]
    assert times.timestep_grid(10, step_size=5) == [0, 5, 10]


# ----- infilling on every process -------------------------------------------------------------
INFILL_PROCESSES = {
    **PROCESSES,
    "mask_uniform": lambda: dd.D3PM(dd.transitions.MaskUniform(
        5, 4, dd.schedules.linear(5, 0.05, 0.3)), dd.schedules.jsd(5)),
    "gaussian": lambda: dd.D3PM(dd.transitions.DiscretizedGaussian(5, bands=2),
                                dd.schedules.linear(5, 0.1, 0.8)),
    "nearest_neighbor": lambda: dd.D3PM(dd.transitions.NearestNeighbor(
        torch.randn(5, 3, generator=torch.Generator().manual_seed(0)), k=2),
        dd.schedules.linear(5, 0.2, 1.0)),
}


@pytest.mark.parametrize("name", sorted(INFILL_PROCESSES))
@pytest.mark.parametrize("kwargs", [{}, {"steps": 2}, {"argmax_last": True}, {"start": 3}])
def test_infilling_holds_fixed_positions_at_every_step_on_every_process(
    name: str, kwargs: dict
) -> None:
    """An uninformative denoiser (equal logits) would move a free position at nearly every
    step, so any step that does not hold the fixed positions (the last one included) shows:
    every state of the trajectory, every input of the denoiser and the sample hold them."""
    proc = INFILL_PROCESSES[name]()
    k, shape = proc.num_classes, (4, 16)
    gen = torch.Generator().manual_seed(3)
    mask = torch.rand(shape, generator=gen) < 0.5
    # the absorbing processes' mask states are not data: hold only real tokens
    real = k - 1 if name in ("absorbing", "mask_uniform") else k
    values = torch.randint(real, shape, generator=gen)
    seen = []

    def uninformative(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(x_t.clone())
        return torch.zeros(*x_t.shape, k)

    kwargs = dict(kwargs)
    if "start" in kwargs:
        t = kwargs.pop("start")
        kwargs["start"] = (t, proc.q_sample(torch.randint(real, shape, generator=gen), t, gen))
    x, traj = proc.sample(uninformative, shape, generator=gen, fixed=(mask, values),
                          return_trajectory=True, **kwargs)
    assert traj[-1][0] == 0 and torch.equal(traj[-1][1], x)
    assert len(seen) == len(traj) - 1
    for _, x_t in traj + [(None, s) for s in seen]:
        assert torch.equal(x_t[mask], values[mask])
    # the free positions did move: the test could see a step that lets go of the fixed ones
    assert not torch.equal(traj[0][1][~mask], x[~mask]) or name == "absorbing"
