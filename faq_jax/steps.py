"""Pure train and eval steps over a data-parallel mesh.

The train step takes a batch shaped ``[accum, micro, H, W, C]`` and loops over the
``accum`` micro-batches inside one jitted call (``lax.scan`` on accelerators, unrolled on
CPU): gradients are averaged, BatchNorm
statistics advance once per micro-batch (as torch's virtual batches do), and the
optimizer updates once, so ``TrainState.step`` counts optimizer updates. BatchNorm
statistics are over the global micro-batch: the batch axis is sharded and XLA inserts
the reductions (sync-BN for free).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs: weights, BN and calibration state, optimizer, step."""

    step: jax.Array  # optimizer updates done
    params: Any
    batch_stats: Any
    quant: Any  # FAQ's frozen activation l's (empty for a float or an all-LSQ network;
    #             LSQ's learned steps are params)
    opt_state: Any
    rng: jax.Array  # dropout key, folded with the step

    def variables(self) -> dict[str, Any]:
        v = {"params": self.params, "batch_stats": self.batch_stats}
        if self.quant:
            v["quant"] = self.quant
        return v


def create_state(variables: dict[str, Any], tx: optax.GradientTransformation,
                 rng: jax.Array, step: int = 0) -> TrainState:
    """A fresh TrainState from model variables."""
    return TrainState(
        step=jnp.asarray(step, jnp.int32), params=variables["params"],
        batch_stats=variables.get("batch_stats", {}), quant=variables.get("quant", {}),
        opt_state=tx.init(variables["params"]), rng=rng,
    )


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                  ) -> jax.Array:
    """Per-example softmax cross-entropy (torch's CrossEntropyLoss), in float32."""
    logits = logits.astype(jnp.float32)
    targets = jax.nn.one_hot(labels, logits.shape[-1])
    if label_smoothing:
        targets = optax.smooth_labels(targets, label_smoothing)
    return optax.softmax_cross_entropy(logits, targets)


def make_train_step(model: nn.Module, tx: optax.GradientTransformation, *,
                    aux_loss_weight: float = 0.4, label_smoothing: float = 0.0,
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, Metrics]]:
    """train_step(state, batch) -> (state, metrics); batch images are [accum, micro, ...]."""

    def loss_fn(params, batch_stats, quant_vars, images, labels, rng):
        variables = {"params": params, "batch_stats": batch_stats}
        if quant_vars:
            variables["quant"] = quant_vars
        out, updates = model.apply(variables, images, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": rng})
        if isinstance(out, tuple):  # Inception-v3 in training: (logits, aux_logits)
            logits, aux = out
            loss = cross_entropy(logits, labels, label_smoothing).mean()
            loss = loss + aux_loss_weight * cross_entropy(aux, labels, label_smoothing).mean()
        else:
            logits = out
            loss = cross_entropy(logits, labels, label_smoothing).mean()
        correct = jnp.sum(jnp.argmax(logits, -1) == labels)
        return loss, (updates["batch_stats"], correct)

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
        accum = batch["image"].shape[0]
        rng = jax.random.fold_in(state.rng, state.step)

        def micro_step(carry, xs):
            grads, batch_stats, loss_sum, correct = carry
            images, labels, i = xs
            (loss, (batch_stats, c)), g = grad_fn(
                state.params, batch_stats, state.quant, images, labels,
                jax.random.fold_in(rng, i))
            grads = jax.tree.map(jnp.add, grads, g)
            return (grads, batch_stats, loss_sum + loss, correct + c), None

        zeros = jax.tree.map(jnp.zeros_like, state.params)
        carry = (zeros, state.batch_stats, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
        if accum == 1 or jax.default_backend() == "cpu":
            # XLA:CPU runs convolutions inside a loop body without its fast kernels (~60x
            # slower, measured): unroll there. accum == 1 needs no loop anywhere.
            for i in range(accum):
                carry, _ = micro_step(carry, (batch["image"][i], batch["label"][i], i))
        else:  # GPU/TPU: one compiled body, activations of one micro-batch live at a time
            carry, _ = jax.lax.scan(
                micro_step, carry, (batch["image"], batch["label"], jnp.arange(accum)))
        grads, batch_stats, loss_sum, correct = carry
        grads = jax.tree.map(lambda g: g / accum, grads)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        n = batch["label"].size
        metrics = {"loss": loss_sum / accum, "top1": correct / n,
                   "grad_norm": optax.tree.norm(grads)}
        new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                                  opt_state=opt_state)
        return new_state, metrics

    return train_step


def eval_metrics(logits: jax.Array, labels: jax.Array, mask: jax.Array) -> Metrics:
    """Sums of loss, top-1 and top-5 hits and the count over the masked-in examples, and
    ``correct``: each example's top-1 hit ([B] bool, False on padding)."""
    mask_f = mask.astype(jnp.float32)
    loss = cross_entropy(logits, labels)
    top5 = jax.lax.top_k(logits.astype(jnp.float32), min(5, logits.shape[-1]))[1]
    hit5 = jnp.any(top5 == labels[:, None], axis=-1)
    correct = (jnp.argmax(logits, -1) == labels) & mask.astype(bool)
    return {
        "loss_sum": jnp.sum(loss * mask_f),
        "top1_sum": jnp.sum(correct.astype(jnp.float32)),
        "top5_sum": jnp.sum(hit5 * mask_f),
        "count": jnp.sum(mask_f),
        "correct": correct,
    }


def make_eval_step(model: nn.Module) -> Callable[[dict[str, Any], Batch], Metrics]:
    """eval_step(variables, batch) -> :func:`eval_metrics` of the model's logits."""

    def eval_step(variables: dict[str, Any], batch: Batch) -> Metrics:
        logits = model.apply(variables, batch["image"], train=False)
        return eval_metrics(logits, batch["label"], batch["mask"])

    return eval_step
