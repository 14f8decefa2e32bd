"""SGD with coupled weight decay, and FAQ's learning-rate and batch-size schedules by epoch.

Schedules are stated in epochs (FAQ.md section 5) and turned into optimizer steps here.
With a batch-size schedule (256 -> 2048 by gradient accumulation) an epoch holds fewer
optimizer steps as the batch grows, so the epoch of a step comes from a table of
epoch-start steps rather than a division.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax

from faq_jax import keypaths, lsq

if TYPE_CHECKING:  # configs are read by attribute only: the core runs without ml_collections
    import ml_collections

SCHEDULES = ("constant", "exponential", "step", "anneal", "cosine")
# Schedules of the optimizer step t over the run's T steps (not constant within an epoch).
PER_STEP = ("anneal", "cosine")


@dataclasses.dataclass(frozen=True)
class BatchSchedule:
    """Optimizer batch size per epoch, realised as ``accum`` micro-batches of ``micro``."""

    num_train: int
    num_epochs: int
    micro: int  # global micro-batch size (one forward/backward)
    sizes: tuple[tuple[int, int], ...]  # (first epoch, global batch size), ascending epochs

    def __post_init__(self):
        if not self.sizes or self.sizes[0][0] != 0:
            raise ValueError(f"batch schedule must start at epoch 0, got {self.sizes!r}")
        epochs = [e for e, _ in self.sizes]
        if epochs != sorted(set(epochs)):
            raise ValueError(f"batch schedule epochs must increase, got {self.sizes!r}")
        for e, b in self.sizes:
            if b % self.micro:
                raise ValueError(f"batch size {b} (from epoch {e}) is not a multiple of the "
                                 f"micro-batch size {self.micro}; set config.micro_batch_size "
                                 "to a divisor")
            if b > self.num_train:
                raise ValueError(f"batch size {b} exceeds the {self.num_train} training examples")

    def batch_size(self, epoch: int) -> int:
        size = self.sizes[0][1]
        for e, b in self.sizes:
            if epoch >= e:
                size = b
        return size

    def accum(self, epoch: int) -> int:
        """Micro-batches per optimizer step in ``epoch``."""
        return self.batch_size(epoch) // self.micro

    def steps_in_epoch(self, epoch: int) -> int:
        return self.num_train // self.batch_size(epoch)

    def epoch_starts(self) -> np.ndarray:
        """Optimizer step at which each epoch starts (length num_epochs + 1)."""
        steps = [self.steps_in_epoch(e) for e in range(self.num_epochs)]
        return np.concatenate([[0], np.cumsum(steps)]).astype(np.int64)

    def total_steps(self) -> int:
        return int(self.epoch_starts()[-1])

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, step within epoch) of optimizer step ``step``."""
        starts = self.epoch_starts()
        epoch = int(np.searchsorted(starts, step, side="right") - 1)
        return epoch, int(step - starts[epoch])

    def micro_offset(self, epoch: int) -> int:
        """Micro-batches consumed before ``epoch`` starts (the data stream position)."""
        return sum(self.steps_in_epoch(e) * self.accum(e) for e in range(epoch))


def batch_schedule(config: ml_collections.ConfigDict, num_train: int, num_epochs: int,
                   ) -> BatchSchedule:
    """The schedule of ``config.batch_size`` / ``config.batch_schedule``."""
    sizes = tuple(tuple(int(v) for v in p) for p in (config.batch_schedule or ()))
    if not sizes:
        sizes = ((0, int(config.batch_size)),)
    micro = int(config.micro_batch_size or sizes[0][1])
    return BatchSchedule(num_train=num_train, num_epochs=num_epochs, micro=micro, sizes=sizes)


def lr_at_epoch(optim: ml_collections.ConfigDict, epoch: jax.Array) -> jax.Array:
    """Learning rate during (integer) ``epoch``: the paper's per-epoch schedules."""
    epoch = jnp.asarray(epoch, jnp.float32)
    if optim.schedule == "constant":
        return jnp.full_like(epoch, optim.lr)
    if optim.schedule == "exponential":  # lr * decay^epoch, e.g. 0.0015 * 0.936^epoch
        return optim.lr * jnp.power(optim.decay_rate, epoch)
    if optim.schedule == "step":  # lr * factor^(number of boundaries passed)
        passed = sum(jnp.where(epoch >= b, 1.0, 0.0) for b in optim.step_epochs)
        return optim.lr * jnp.power(optim.step_factor, passed)
    raise ValueError(f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")


def lr_at_fraction(optim: ml_collections.ConfigDict, frac: jax.Array) -> jax.Array:
    """Learning rate after the fraction ``frac = t / T`` of the run's optimizer steps.

    ``anneal``: ``lr (final_lr / lr)^(t/T)``, FAQ's exponential decay compressed into T steps
    (0.0015 -> 1e-6 whatever the epoch count); ``cosine``: ``final_lr + (lr - final_lr)
    (1 + cos(pi t/T)) / 2``.
    """
    frac = jnp.clip(jnp.asarray(frac, jnp.float32), 0.0, 1.0)
    if optim.schedule == "anneal":
        return optim.lr * jnp.power(optim.final_lr / optim.lr, frac)
    if optim.schedule == "cosine":
        return optim.final_lr + (optim.lr - optim.final_lr) * 0.5 * (1 + jnp.cos(jnp.pi * frac))
    raise ValueError(f"optim.schedule {optim.schedule!r} is not one of {PER_STEP}")


def lr_schedule(optim: ml_collections.ConfigDict, batches: BatchSchedule) -> optax.Schedule:
    """Step -> learning rate: per epoch (constant within one) or, for :data:`PER_STEP`
    schedules, per step over the run's ``total_steps``."""
    if optim.schedule in PER_STEP:
        total = max(batches.total_steps(), 1)
        return lambda step: lr_at_fraction(optim, jnp.asarray(step, jnp.float32) / total)
    starts = jnp.asarray(batches.epoch_starts()[:-1])

    def schedule(step: jax.Array) -> jax.Array:
        epoch = jnp.searchsorted(starts, step, side="right") - 1
        return lr_at_epoch(optim, epoch)

    return schedule


def coupled_weight_decay(rate: float) -> optax.GradientTransformation:
    """``g + rate * p`` for every parameter but LSQ's learned step sizes
    (``lsq.is_step_param``): they scale the quantizer, and decay would shrink every step.

    Arithmetic and (empty) state are ``optax.add_decayed_weights``'s, so a network without
    LSQ steps trains, and checkpoints, exactly as with it.
    """

    def update(updates, state, params):
        if params is None:
            raise ValueError("coupled weight decay needs the parameters")
        updates = jax.tree_util.tree_map_with_path(
            lambda path, g, p: g if lsq.is_step_param(keypaths.key_name(path[-1]))
            else g + rate * p, updates, params)
        return updates, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(optim: ml_collections.ConfigDict, batches: BatchSchedule,
                   ) -> optax.GradientTransformation:
    """SGD, momentum 0.9, weight decay added to the gradient (torch's coupled decay).

    Decay applies to every parameter, BN and biases included, as torch.optim.SGD does,
    except LSQ's learned step sizes (:func:`coupled_weight_decay`).
    """
    return optax.chain(
        coupled_weight_decay(optim.weight_decay) if optim.weight_decay else
        optax.identity(),
        optax.sgd(lr_schedule(optim, batches), momentum=optim.momentum or None,
                  nesterov=bool(optim.nesterov)),
    )
