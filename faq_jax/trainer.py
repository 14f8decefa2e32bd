"""One training stage and exact evaluation: the objects :mod:`faq_jax.train` runs.

:class:`Evaluator` evaluates a model over the whole eval split. :class:`Trainer` trains a
model for one stage of a run (fp32 pretraining, or FAQ fine-tuning): it holds what every
step needs (model, config, mesh, writer, checkpoint folder, the stage's batch and learning
rate schedules) and runs the loop; the step itself is the pure
``steps.make_train_step``, jitted once over the mesh.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from faq_jax import (
    analysis,
    checkpointing,
    console,
    optim,
    paired,
    sharding,
    steps,
    writers,
)
from faq_jax import data as data_lib
from faq_jax.workdir import CheckpointError


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or Inf; the message names the step."""


@dataclasses.dataclass(frozen=True)
class Evaluator:
    """Top-1/top-5/loss of ``model`` over the whole eval split (padded + masked: every
    example once), and each example's top-1 hit. Build one per model: its step compiles
    once. ``step`` replaces the model's jitted eval step (an exported integer network run
    on the host: ``step(variables, batch) -> steps.eval_metrics(...)``)."""

    model: nn.Module | None
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    writer: Any = None  # clu metric writer; None: log only
    step: Callable[..., steps.Metrics] | None = None

    @functools.cached_property
    def eval_step(self) -> Callable[..., steps.Metrics]:
        return self.step if self.step is not None else jax.jit(steps.make_eval_step(self.model))

    def __call__(self, variables: dict[str, Any], step: int = 0, prefix: str = "eval",
                 transient: bool = False) -> dict[str, Any]:
        """The metrics of ``variables``, written as ``<prefix>/<metric>`` at ``step``.

        Returns top1, top5 (percent), loss, count and ``correct``: the examples' top-1
        hits in split order, ``paired.pack``ed. ``transient``: an evaluation inside a
        training stage (its progress bar goes when done; see ``console.progress``).
        """
        config, mesh = self.config, self.mesh
        variables = sharding.replicate(variables, mesh)
        global_batch, local = sharding.padded_eval_batch(config.eval_batch_size)
        pi, pc = jax.process_index(), jax.process_count()
        it = data_lib.eval_batches(config, local_batch_size=local, process_index=pi,
                                   process_count=pc)
        bsh = sharding.batch_sharding(mesh)
        n_total = data_lib.num_eval_batches(config, local_batch_size=local, process_count=pc)
        if config.max_eval_batches > 0:
            n_total = min(n_total, config.max_eval_batches)
        start, end = data_lib.shard_bounds(data_lib.dataset_info(config).num_eval, pi, pc)
        total, hits, rows = None, [], []
        t0 = time.time()
        bar = console.progress(n_total, f"eval {prefix}", unit="batch", transient=transient)
        try:
            for i, batch in enumerate(it):
                if i >= n_total:
                    break
                # Each row's example index (-1: padding) finds its hit again after the
                # batch was split over devices and processes.
                index = start + i * local + np.arange(local)
                batch["index"] = np.where(batch["mask"] & (index < end), index, -1)
                gbatch = sharding.to_global(batch, bsh)
                m = dict(self.eval_step(variables, gbatch))
                hits.append(m.pop("correct"))
                rows.append(gbatch["index"])
                total = m if total is None else jax.tree.map(jnp.add, total, m)
                bar.update(1)
        finally:
            bar.close()
        total = jax.device_get(total)
        count = float(total["count"])
        result = {"top1": 100.0 * float(total["top1_sum"]) / count,
                  "top5": 100.0 * float(total["top5_sum"]) / count,
                  "loss": float(total["loss_sum"]) / count, "count": count}
        secs = time.time() - t0
        logging.info("%s: top1 %.2f top5 %.2f loss %.4f over %d examples (%.1f img/s)", prefix,
                     result["top1"], result["top5"], result["loss"], int(count),
                     count / max(secs, 1e-9))
        if self.writer is not None:
            self.writer.write_scalars(step, {f"{prefix}/{k}": v for k, v in result.items()})
        result["correct"] = paired.pack(_in_split_order(hits, rows))
        return result


def _in_split_order(hits: list[Any], rows: list[Any]) -> np.ndarray:
    """The per-example hits of every batch (global arrays), ordered by example index."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils  # noqa: PLC0415

        hits, rows = multihost_utils.process_allgather((hits, rows), tiled=True)
    hit = np.concatenate([np.asarray(h).ravel() for h in hits]) if hits else np.zeros(0, bool)
    row = np.concatenate([np.asarray(r).ravel() for r in rows]) if rows else np.zeros(0, int)
    keep = row >= 0
    return hit[keep][np.argsort(row[keep], kind="stable")]


class Fitted(NamedTuple):
    """What a training stage returns."""

    variables: dict[str, Any]  # params, batch_stats (and quant) after the last step
    grad_noise: dict[str, Any] | None  # analysis.summarize_grad_noise of the last step


@dataclasses.dataclass
class Trainer:
    """Trains ``evaluator.model`` for one stage; resumes from ``checkpoint_dir``.

    ``stage`` holds the stage's schedule (``num_epochs``, ``batch_size``,
    ``micro_batch_size``, ``batch_schedule``, ``optim``): the run's config for fine-tuning,
    ``config.pretrain``'s values for fp32 training. ``config`` is the whole run's (data,
    seed, logging, checkpoint cadence, ``max_steps``, analysis).
    """

    evaluator: Evaluator  # its model is the one trained; evaluated every eval_every_epochs
    config: ml_collections.ConfigDict
    stage: ml_collections.ConfigDict
    checkpoint_dir: str
    num_train: int  # training examples (the epoch length)
    eval_prefix: str  # TensorBoard prefix of the per-epoch evaluations
    writer: Any = None  # clu metric writer (default: the evaluator's)
    name: str = "train"  # the stage, as the progress bar and messages name it
    # Derived from stage and num_train:
    batches: optim.BatchSchedule = dataclasses.field(init=False)
    tx: optax.GradientTransformation = dataclasses.field(init=False)
    total_steps: int = dataclasses.field(init=False)  # optimizer updates (max_steps applied)

    def __post_init__(self):
        self.writer = self.writer if self.writer is not None else self.evaluator.writer
        self.batches = optim.batch_schedule(self.stage, self.num_train,
                                            int(self.stage.num_epochs))
        self.tx = optim.make_optimizer(self.stage.optim, self.batches)
        self.total_steps = self.batches.total_steps()
        if self.config.max_steps > 0:
            self.total_steps = min(self.total_steps, self.config.max_steps)

    @property
    def model(self) -> nn.Module:
        return self.evaluator.model

    @property
    def mesh(self) -> jax.sharding.Mesh:
        return self.evaluator.mesh

    def fit(self, variables: dict[str, Any]) -> Fitted:
        """Trains from ``variables`` (or the latest checkpoint); returns the final variables.

        With ``config.analysis.grad_noise`` and a quantized model, measures Fig. 1's gradient
        noise every step (costs one params-sized copy on device) and logs
        ``grad_noise/<layer>`` at log steps.
        """
        repl = sharding.replicated(self.mesh)
        seed = self.config.seed + 1
        state = jax.jit(lambda v: steps.create_state(v, self.tx, jax.random.key(seed)),
                        out_shardings=repl)(sharding.replicate(variables, self.mesh))
        del variables  # donated below: never touch the initial arrays again
        ckpt = checkpointing.Checkpointer(self.checkpoint_dir, keep=self.config.keep_checkpoints,
                                          save_every_steps=self.config.checkpoint_every_steps)
        try:
            return self._loop(state, ckpt)
        finally:  # saves in flight complete; SIGTERM/SIGINT go back to their previous handlers
            ckpt.close()

    def _train_step(self) -> Callable[..., tuple[steps.TrainState, steps.Metrics]]:
        repl = sharding.replicated(self.mesh)
        step = steps.make_train_step(self.model, self.tx,
                                     aux_loss_weight=self.config.aux_loss_weight,
                                     label_smoothing=self.config.label_smoothing)
        return jax.jit(step, in_shardings=(repl, sharding.batch_sharding(self.mesh, 1)),
                       out_shardings=(repl, repl), donate_argnums=0)

    def _micro_batches(self, step: int) -> Iterator[dict[str, np.ndarray]]:
        """The micro-batch stream from optimizer step ``step``; its epoch e holds exactly
        what the schedule's epoch e consumes, so accumulated micro-batches are one batch's
        examples."""
        b = self.batches
        epoch, in_epoch = b.locate(step) if step < self.total_steps else (0, 0)
        return data_lib.train_batches(
            self.config, local_batch_size=sharding.check_divisible(b.micro, "micro-batch size"),
            start_step=b.micro_offset(epoch) + in_epoch * b.accum(epoch),
            process_index=jax.process_index(), process_count=jax.process_count(),
            epoch_steps=lambda e: b.steps_in_epoch(e) * b.accum(e))

    def _loop(self, state: steps.TrainState, ckpt: checkpointing.Checkpointer) -> Fitted:
        """fit's body: resume, the step loop, periodic/preemption/final saves."""
        config, batches, total, writer = self.config, self.batches, self.total_steps, self.writer
        restored = ckpt.restore(state)
        if restored is not None:
            state = restored
            console.warn(f"{self.name}: resumed from {ckpt.directory} at step {int(state.step)}")
        start = int(jax.device_get(state.step))
        if start > total:
            raise CheckpointError(
                f"the checkpoint in {ckpt.directory} is at step {start}, past this run's last "
                f"step {total} (were num_epochs or max_steps lowered?). Restore the setting, or "
                "use a new --workdir.")
        train_step = self._train_step()
        gn = gn_state = gn_cos = None
        if config.analysis.grad_noise and getattr(self.model, "policy", None) is not None:
            gn = analysis.GradNoise(self.model.policy, config.analysis.grad_noise_ema)
            gn_state = gn.init(state.params)
            if start and start == total:
                console.warn(f"{self.name}: no steps left after the resume, so the gradient "
                             "noise (analysis.grad_noise) is not measured again (summary.json "
                             "keeps a value measured before, if any).")
            elif start > 0:  # the EMA is not checkpointed
                console.warn(f"{self.name}: the gradient-noise EMA restarts from zero at the "
                             f"resume (step {start}); it forgets its start within "
                             f"~{3 / (1 - gn.ema):.0f} steps.")
        data = self._micro_batches(start)
        report = writers.progress_reporter(total, writer)
        pending: list[tuple[int, dict[str, jax.Array]]] = []
        t0, images = time.time(), 0
        bsh = sharding.batch_sharding(self.mesh, 1)
        bar = console.progress(total, self.name, initial=start)
        loss, evaluated = float("nan"), ""  # shown beside the bar
        try:
            for step in range(start, total):
                epoch, in_epoch = batches.locate(step)
                accum = batches.accum(epoch)
                micro = [next(data) for _ in range(accum)]
                batch = {k: np.stack([m[k] for m in micro]) for k in ("image", "label")}
                old_params = gn.copy(state.params) if gn else None  # the step donates state
                state, metrics = train_step(state, sharding.to_global(batch, bsh))
                if gn:
                    gn_state, gn_cos = gn.update(gn_state, old_params, state.params)
                pending.append((step + 1, metrics))
                images += accum * batches.micro
                done = step + 1
                end_of_epoch = in_epoch + 1 == batches.steps_in_epoch(epoch)
                if done % config.log_every_steps == 0 or done == total or end_of_epoch:
                    loss = _flush(pending, writer, images / max(time.time() - t0, 1e-9))
                    bar.set_postfix_str(f"loss {loss:.4f}{evaluated}", refresh=False)
                    if gn:
                        per_layer = analysis.summarize_grad_noise(gn_cos)["per_layer"]
                        writer.write_scalars(done, {f"grad_noise/{k}": v
                                                    for k, v in per_layer.items()})
                    pending, t0, images = [], time.time(), 0
                report(done)
                if ckpt.will_save(done):  # never checkpoint a diverged state
                    _check_finite(pending)
                    if not bool(_all_finite(state.params)):
                        raise NonFiniteLossError(
                            f"parameters are not finite after step {done}: training diverged. "
                            "Lower config.optim.lr, or resume from an earlier checkpoint.")
                    ckpt.save(done, state)
                if ckpt.should_stop(done):
                    _flush(pending, writer, 0.0)
                    if ckpt.latest_step() != done:  # the periodic save may have written it
                        ckpt.save(done, state, force=True)
                    raise SystemExit(f"{ckpt.stop_reason}: checkpoint saved at step {done} in "
                                     f"{ckpt.directory}; the same command resumes from it")
                if end_of_epoch and (epoch + 1) % max(1, config.eval_every_epochs) == 0 \
                        and done < total:
                    r = self.evaluator(state.variables(), done,
                                       f"{self.eval_prefix}/epoch{epoch + 1}", transient=True)
                    evaluated = f", eval top-1 {r['top1']:.2f} (epoch {epoch + 1})"
                    bar.set_postfix_str(f"loss {loss:.4f}{evaluated}", refresh=False)
                bar.update(1)
        finally:
            bar.close()
        _flush(pending, writer, 0.0)
        if ckpt.latest_step() != total:
            ckpt.save(total, state, force=True)
        grad_noise = None if gn_cos is None else analysis.summarize_grad_noise(gn_cos)
        return Fitted(jax.device_get(state.variables()), grad_noise)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(pending: list[tuple[int, dict[str, jax.Array]]],
                  ) -> list[tuple[int, dict[str, Any]]]:
    """Fetches the queued metrics; raises NonFiniteLossError at the first non-finite loss."""
    fetched = jax.device_get(pending)
    for step, m in fetched:
        if not np.isfinite(m["loss"]):
            raise NonFiniteLossError(
                f"loss is {float(m['loss'])} at step {step}: training diverged. Lower "
                "config.optim.lr, check the data, or resume from an earlier checkpoint.")
    return fetched


def _flush(pending: list[tuple[int, dict[str, jax.Array]]],
           writer: Any, img_per_s: float) -> float:
    """Fetches queued step metrics (one host sync per log period) and checks for NaN;
    returns the last step's loss (NaN when nothing was queued)."""
    if not pending:
        return float("nan")
    fetched = _check_finite(pending)
    step, last = fetched[-1]
    scalars = {f"train/{k}": float(v) for k, v in last.items()}
    if img_per_s:
        scalars["train/images_per_sec"] = img_per_s
    writer.write_scalars(step, scalars)
    return scalars["train/loss"]
