"""The trainer: one loop for every method, data kind and network. It knows no diffusion
mathematics; it minimises the mean over the batch of `Method.losses(...)["loss"] / positions`.

Run folder (see docs/ARCHITECTURE.md): config.yaml, data/ (DataInfo + codec), metrics.jsonl,
tensorboard/, samples/step_N.txt|png, checkpoints/. A folder that already holds another run is
never overwritten: continuing one needs `resume=True`, which restores weights, optimizer, EMA,
the RNG states and the data position, so N steps in one go and N/2 + resume + N/2 give the same
weights. SIGINT and SIGTERM are deferred to the end of the step (see `interrupt.py`): the run
saves a checkpoint there and `fit` raises `TrainingInterrupted`.

The data position is global (every rank holds the same one), so a run may resume with another
number of processes: the data order continues exactly, the per-rank noise streams are re-seeded.

Defaults: the periodic evaluation uses `train.eval_examples` (256) validation examples with
`train.eval_steps` inference steps (None = all T) and a generator seeded from `train.seed`, so it
never disturbs the training noise. Under torchrun, `train.batch_size` is the global batch, split
evenly over processes and `grad_accum` micro-batches; rank 0 alone logs, evaluates and writes.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm import tqdm

from discrete_diffusion.data.base import DataSource
from discrete_diffusion.evaluation.bound import evaluate_bound
from discrete_diffusion.figures.samples import is_picture, write_samples
from discrete_diffusion.files import atomic_write_json
from discrete_diffusion.progress import progress_bar
from discrete_diffusion.training import distributed
from discrete_diffusion.training.builders import build_method, build_model
from discrete_diffusion.training.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_weights,
    save_checkpoint,
)
from discrete_diffusion.training.config import RunConfig, config_from_dict, dump_config, read_yaml
from discrete_diffusion.training.data_identity import DATA_RECORD
from discrete_diffusion.training.ema import EMA
from discrete_diffusion.training.interrupt import StopRequest, TrainingInterrupted
from discrete_diffusion.training.metrics import MetricsLog, RunningStats
from discrete_diffusion.training.nonfinite import FiniteUpdate, NonFiniteTraining, skip_warning
from discrete_diffusion.training.rng import get_rng_state, seed_all, seed_of, set_rng_state

# train keys that may change when a run is resumed (bookkeeping, not the optimisation itself)
RESUMABLE_KEYS = {"steps", "log_every", "eval_every", "eval_examples", "eval_steps",
                  "sample_every", "num_samples", "ckpt_every", "keep_checkpoints", "device",
                  "compile", "max_consecutive_skips"}


def config_differences(a: dict, b: dict) -> list[str]:
    """Dotted keys whose values differ between two `RunConfig.to_dict()` results."""
    keys = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section, {}), b.get(section, {})
        keys += [f"{section}.{k}" for k in sorted(set(sa) | set(sb)) if sa.get(k) != sb.get(k)]
    return keys


def _resolved(saved: dict) -> dict:
    """A saved config in today's resolved form (one written by an older version is upgraded),
    so that it compares with `RunConfig.to_dict()` by meaning."""
    return config_from_dict(saved).to_dict() if saved else saved


class Trainer:
    """Trains `config`'s model on `data` with `config`'s method, writing to `run_dir`.

    Args:
        config: the validated run config.
        data: the data source (already built from `config.data`).
        run_dir: the run folder.
        resume: continue the run in `run_dir` from its latest checkpoint.
        progress: show a tqdm bar (rank 0 only).
        data_record: the identity and history of the training data (`data_identity`),
            written to `RUN_DIR/data/source.json` and into every checkpoint.
    """

    def __init__(self, config: RunConfig, data: DataSource, run_dir: str | Path, *,
                 resume: bool = False, progress: bool = True,
                 data_record: dict | None = None) -> None:
        self.config, self.data, self.run_dir = config, data, Path(run_dir)
        self.data_record = data_record
        self.tc = tc = config.train
        self.dist, self.device = distributed.setup(tc.device)
        self.main = self.dist.is_main
        if tc.precision == "bf16" and self.device.type != "cuda" and self.main:
            print(f"note: train.precision bf16 applies on CUDA only; training in fp32 on "
                  f"{self.device}", file=sys.stderr)
        self.micro_batch = self._micro_batch()
        self.info = data.info()
        torch.manual_seed(tc.seed)  # identical initial weights on every rank
        self.method = build_method(config, self.info).to(self.device)
        self.model = build_model(config, self.info, self.method).to(self.device)
        self.ema = EMA(self.model, tc.ema_decay) if tc.ema_decay > 0 else None
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=tc.lr, betas=tc.betas,
                                           eps=tc.eps, weight_decay=tc.weight_decay)
        self.generator = torch.Generator(self.device)  # the diffusion noise of this rank
        self.generator.manual_seed(seed_of(tc.seed, self.dist.rank, 1))
        self.step, self.skipped = 0, 0
        self.update, self.consecutive_skips = FiniteUpdate(self.optimizer), 0
        self._saved_step = -1  # the step of the last checkpoint written or restored
        self.progress = progress and self.main
        self.positions = self.info.num_positions
        checkpoint = self._prepare_run_dir(resume)
        self.batches = data.train_batches(
            self.micro_batch, seed=tc.seed, rank=self.dist.rank, world_size=self.dist.world_size,
            state=self._restore(checkpoint) if checkpoint else None)
        self.net = self._wrap(self.model)
        self.log = MetricsLog(self.run_dir, enabled=self.main)
        self.stats = RunningStats(self.method.num_steps)
        self._last_log = (self.step, self.skipped)  # the skip warning counts from here

    # ----- set-up --------------------------------------------------------------------------
    def _micro_batch(self) -> int:
        parts = self.dist.world_size * self.tc.grad_accum
        if self.tc.batch_size % parts:
            raise ValueError(f"train.batch_size {self.tc.batch_size} is not divisible by "
                             f"{self.dist.world_size} processes x {self.tc.grad_accum} "
                             f"accumulation steps")
        return self.tc.batch_size // parts

    def _wrap(self, model: nn.Module) -> nn.Module:
        net = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.tc.compile:
            net = torch.compile(net)
        return net

    def _prepare_run_dir(self, resume: bool):
        """Check the run folder (one-line errors), write config and data info on rank 0, and
        return the checkpoint to resume from (or None)."""
        found = list_checkpoints(self.run_dir / "checkpoints") if self.run_dir.is_dir() else []
        saved = self.run_dir / "config.yaml"
        if resume and found:
            ckpt = load_checkpoint(self.run_dir, optimizer=True)
            self._check_resumable(ckpt.state.get("config", {}))
        elif not resume and self.run_dir.is_dir() and any(self.run_dir.iterdir()):
            if found:
                raise ValueError(f"run folder {self.run_dir} already holds checkpoints; pass "
                                 f"--resume to continue it or choose another --out")
            if not saved.is_file():
                raise ValueError(f"run folder {self.run_dir} exists and is not a run; choose "
                                 f"another --out")
            diff = config_differences(_resolved(read_yaml(saved)), self.config.to_dict())
            if diff:
                raise ValueError(f"run folder {self.run_dir} holds a different config "
                                 f"({', '.join(diff[:3])} differ); choose another --out")
            ckpt = None
        else:
            ckpt = None
        distributed.barrier(self.dist)  # every rank has checked before rank 0 writes
        if self.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            dump_config(self.config, saved)
            self.info.save(self.run_dir / "data")
            self.data.codec().save(self.run_dir / "data")
            if self.data_record is not None:
                atomic_write_json(self.run_dir / "data" / DATA_RECORD, self.data_record,
                                  indent=2)
        distributed.barrier(self.dist)
        return ckpt

    def _check_resumable(self, saved: dict) -> None:
        diff = [k for k in config_differences(_resolved(saved), self.config.to_dict())
                if not (k.startswith("train.") and k.split(".", 1)[1] in RESUMABLE_KEYS)]
        if diff:
            raise ValueError(f"cannot resume {self.run_dir} with a different config "
                             f"({', '.join(diff[:3])} differ)")

    def _restore(self, ckpt) -> dict | None:
        """Load weights, optimizer, EMA and this rank's RNG states; return the data state.

        The data state is global ("data"), so any number of processes may resume it; at the
        number that wrote it every RNG state is restored too, at another the per-rank streams
        are re-seeded from (seed, rank, step). Checkpoints holding one data state per rank
        (written before the position was global) resume at the same number only."""
        load_weights(self.model, ckpt.weights, ckpt.path)
        self.optimizer.load_state_dict(ckpt.optimizer)
        if self.ema is not None:
            if ckpt.ema is None:
                raise ValueError(f"checkpoint {ckpt.path} has no EMA weights to resume")
            load_weights(self.ema.model, ckpt.ema, ckpt.path)
        ranks, world = ckpt.state["ranks"], self.dist.world_size
        self.step, self.skipped = ckpt.step, int(ckpt.state.get("skipped", 0))
        self._saved_step = ckpt.step
        data_state = ckpt.state.get("data")
        if data_state is None:
            if len(ranks) != world:
                raise ValueError(f"checkpoint {ckpt.path} holds the data positions of "
                                 f"{len(ranks)} processes; resume it with the same number "
                                 f"(now {world})")
            data_state = ranks[self.dist.rank]["data"]
        if len(ranks) == world:
            set_rng_state(ranks[self.dist.rank]["rng"], self.generator)
        else:
            if self.main:
                print(f"note: resuming a run of {len(ranks)} processes with {world}: the data "
                      f"order continues exactly, the noise streams of each process are "
                      f"re-seeded", file=sys.stderr)
            seed_all(seed_of(self.tc.seed, self.dist.rank, 4, self.step), self.generator)
        return data_state

    # ----- state ---------------------------------------------------------------------------
    def _rank_state(self) -> dict:
        """This rank's data position and RNG states, read between steps (signals wait for
        the step boundary), so they always belong with the weights saved beside them."""
        return {"data": self.batches.state_dict(), "rng": get_rng_state(self.generator)}

    def save(self) -> None:
        """Write a checkpoint of the completed steps (all ranks must call it)."""
        ranks = distributed.gather(self.dist, self._rank_state())
        if self.main:
            state = {"config": self.config.to_dict(), "ranks": ranks, "skipped": self.skipped,
                     "kinds": {"data": self.config.data_kind, "model": self.config.model_kind,
                               "method": self.config.method_kind},
                     "num_classes": self.method.num_classes, "num_steps": self.method.num_steps}
            positions = [r["data"] for r in ranks]
            if all(p == positions[0] for p in positions):  # a global position: stored once
                state["data"] = positions[0]
                for r in ranks:
                    del r["data"]
            if self.data_record is not None:
                state["data_source"] = self.data_record
            save_checkpoint(self.run_dir / "checkpoints", self.step, self.model, self.optimizer,
                            state, self.ema.model if self.ema else None, self.tc.keep_checkpoints)
        self._saved_step = self.step
        distributed.barrier(self.dist)

    @property
    def eval_model(self) -> nn.Module:
        """The weights evaluation and sampling use: EMA when on."""
        return self.ema.model if self.ema is not None else self.model

    # ----- the loop ------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train until `train.steps`; returns the last logged metrics and evaluation."""
        summary: dict = {}
        bar = progress_bar(total=self.tc.steps, initial=self.step, desc="train", unit="step",
                           disable=not self.progress)
        busy, units = 0.0, 0  # throughput counts training time only, not evaluations
        try:
            with StopRequest(announce=self.main) as stop:
                while self.step < self.tc.steps:
                    start = time.perf_counter()
                    units += self.train_step()
                    busy += time.perf_counter() - start
                    bar.update(1)
                    if self.step % self.tc.log_every == 0 or self.step == self.tc.steps:
                        summary["train"] = self._log(units / max(busy, 1e-9), bar)
                        busy, units = 0.0, 0
                    self._periodic(summary)
                    self._stop_if_asked(stop)
                if self._saved_step != self.step:
                    self.save()
                self._stop_if_asked(stop)
        finally:
            bar.close()
            self.log.close()
        distributed.cleanup(self.dist)
        summary["skipped"] = self.skipped
        summary["step"] = self.step
        return summary

    def _periodic(self, summary: dict) -> None:
        step, tc = self.step, self.tc
        if tc.eval_every and (step % tc.eval_every == 0 or step == tc.steps):
            summary["eval"] = self.evaluate()
        if tc.sample_every and (step % tc.sample_every == 0 or step == tc.steps):
            self.write_samples()
        if tc.ckpt_every and step % tc.ckpt_every == 0:
            self.save()

    def _stop_if_asked(self, stop: StopRequest) -> None:
        """At a step boundary: when any rank got a signal, all save this step and stop."""
        signum = distributed.max_over_ranks(self.dist, stop.signum, self.device)
        if signum:
            if self._saved_step != self.step:
                self.save()
            distributed.cleanup(self.dist)
            raise TrainingInterrupted(signum, self.step)

    def _autocast(self):
        if self.tc.precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self) -> int:
        """One update over `grad_accum` micro-batches; returns the units (positions) seen."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(self.step)
        units = 0
        for micro in range(self.tc.grad_accum):
            x_0 = next(self.batches).to(self.device, non_blocking=True)
            sync = micro == self.tc.grad_accum - 1 or not self.dist.enabled
            with (contextlib.nullcontext() if sync else self.net.no_sync()), self._autocast():
                out = self.method.losses(self.net, x_0, generator=self.generator)
                loss = (out["loss"].float() / self.positions).mean() / self.tc.grad_accum
            loss.backward()
            self._record(out)
            units += x_0.shape[0] * self.positions * self.dist.world_size
        self._apply_update()
        self.step += 1
        return units

    def learning_rate(self, step: int) -> float:
        """Linear warm-up over `warmup_steps` updates to `lr`, then constant."""
        if self.tc.warmup_steps == 0:
            return self.tc.lr
        return self.tc.lr * min(1.0, (step + 1) / self.tc.warmup_steps)

    def _apply_update(self) -> None:
        """Clip, step and update the EMA; an update with a non-finite gradient norm, weight or
        optimizer state is undone and counted, and `max_consecutive_skips` in a row stop
        training with a one-line error (so no checkpoint ever holds a non-finite weight)."""
        clip = self.tc.grad_clip if self.tc.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        self.stats.add("grad_norm", norm.reshape(1))
        # identical on every rank: gradients are all-reduced, so weights stay in step
        if bool(torch.isfinite(norm)) and self.update.step():
            self.consecutive_skips = 0
            if self.ema is not None:
                self.ema.update(self.model)
            return
        self.skipped += 1
        self.consecutive_skips += 1
        self.optimizer.zero_grad(set_to_none=True)
        limit = self.tc.max_consecutive_skips
        if limit and self.consecutive_skips >= limit:
            raise NonFiniteTraining(self.step + 1, self.consecutive_skips, self.skipped)

    def _record(self, out: dict[str, Tensor]) -> None:
        if not self.main:
            return
        to_bits = 1.0 / (self.positions * math.log(2))
        t = out.get("t")
        self.stats.add("loss", out["loss"] / self.positions)
        self.stats.add("bits_per_unit", out["bound"] * to_bits, t)
        for key in ("vb", "ce"):
            if key in out:
                self.stats.add(f"{key}_bits", out[key] * to_bits, t if key == "vb" else None)

    def _log(self, units_per_sec: float, bar) -> dict:
        values = self.stats.means()
        self.stats.reset()
        values.update(lr=self.learning_rate(self.step - 1), skipped=self.skipped,
                      units_per_sec=units_per_sec)
        self.log.log(self.step, values)
        bar.set_postfix(loss=f"{values.get('loss', float('nan')):.4f}",
                        bits=f"{values.get('bits_per_unit', float('nan')):.4f}",
                        units_s=f"{units_per_sec:.0f}")
        self._warn_skips()
        return values

    def _warn_skips(self) -> None:
        """Warn on stderr when a large share of the updates since the last log line were
        skipped (the count is also in metrics.jsonl, the checkpoints and `d3pm eval`)."""
        (since, before), self._last_log = self._last_log, (self.step, self.skipped)
        message = skip_warning(self.step - since, self.skipped - before, since, self.skipped,
                               self.step)
        if self.main and message:
            tqdm.write(message, file=sys.stderr)

    # ----- evaluation and samples (rank 0) -------------------------------------------------
    def evaluate(self) -> dict | None:
        """Bound on `eval_examples` validation examples with `eval_steps` steps."""
        result = None
        if self.main and self.tc.eval_examples > 0:
            gen = torch.Generator(self.device).manual_seed(seed_of(self.tc.seed, 2, self.step))
            batches = self.data.eval_batches("validation", self.micro_batch,
                                             max_examples=self.tc.eval_examples)
            with self._autocast():
                (result,) = evaluate_bound(self.method, self.eval_model, batches,
                                           [self.tc.eval_steps], gen, unit=self.info.unit,
                                           device=self.device)
            self.log.log(self.step, {k: v for k, v in result.items()
                                     if isinstance(v, (int, float))}, prefix="eval")
            if self.progress:
                tqdm.write(f"step {self.step}: validation bound {result['bits_per_unit']:.4f} "
                           f"bits/{self.info.unit}", file=sys.stderr)
        distributed.barrier(self.dist)
        return result

    def write_samples(self) -> Path | None:
        """Render `num_samples` samples to samples/step_N.txt (.png for images and points)."""
        path = None
        if self.main and self.tc.num_samples > 0:
            codec = self.data.codec()
            suffix = ".png" if is_picture(codec) else ".txt"
            path = self.run_dir / "samples" / f"step_{self.step:06d}{suffix}"
            path.parent.mkdir(exist_ok=True)
            gen = torch.Generator(self.device).manual_seed(seed_of(self.tc.seed, 3, self.step))
            with self._autocast():
                x = self.method.sample(self.eval_model, self.tc.num_samples,
                                       steps=self.tc.eval_steps, generator=gen)
            write_samples(codec, x.cpu(), out=path)
        distributed.barrier(self.dist)
        return path
