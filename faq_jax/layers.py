"""Quantized Flax building blocks: conv, dense, folded BatchNorm, activation quantizers.

Every block takes ``policy: Policy | None``. With ``policy=None`` it is exactly its float
counterpart (same parameters, same arithmetic); with a policy it applies FAQ's
quantizers (FAQ.md section 2) and looks its widths up by its own module path.

Calibration (FAQ.md section 3) needs the *unquantized* network: when the ``calib``
collection is mutable, every block runs its float path and each :class:`ActQuant` sows
the l its batch asks for. Activation l's live in the ``quant`` collection, never in
``params``, so the optimizer never touches them.

Where the policy makes a quantizer LSQ's (``policy.method_of``), its step is learned: a
parameter in ``params`` (``Policy.weight_step_param`` beside a kernel,
``Policy.act_step_param`` on an :class:`ActQuant`) that starts from ``lsq.init_step`` of the
initial kernel (weights) or, in the calibration pass, is sown from the batch (activations).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from faq_jax import lsq, quant
from faq_jax.policy import Policy

Initializer = Callable[..., jax.Array]
Padding = Sequence[tuple[int, int]]
# A layer constructor, usually a functools.partial of one of the modules below with the
# policy (and dtype, train) bound: networks build them once and hand them to their blocks.
ModuleDef = Callable[..., nn.Module]

QUANT = "quant"  # collection of frozen activation l's
CALIB = "calib"  # collection sown during calibration


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def _calibrating(module: nn.Module) -> bool:
    """A calibration pass: ``calib`` mutable, and neither ``init`` nor ``mutable=True``
    (where every collection is, ``params`` included): an ordinary training loop's
    ``apply(..., mutable=True)`` keeps the network quantized."""
    return (module.is_mutable_collection(CALIB) and not module.is_initializing()
            and not module.is_mutable_collection("params"))


def _active(module: nn.Module) -> bool:
    """Quantize unless the policy is off or this is a calibration pass."""
    return module.policy is not None and not _calibrating(module)


def _kernel(module: nn.Module, kernel: jax.Array) -> jax.Array:
    """The kernel the conv/dense computes with: quantized by the policy (FAQ, or LSQ with its
    learned step, created here: it starts at ``lsq.init_step`` of the initial kernel)."""
    if module.policy is None:
        return kernel
    path = _path(module)
    name = module.policy.weight_step_param(path)
    step = None
    if name is not None:
        bits = module.policy.weight_bits(path)
        step = module.param(name, lambda _: lsq.to_param(
            lsq.init_step(kernel, bits, True), module.policy.lsq_pow2))
    if not _active(module):
        return kernel
    return module.policy.quantize_weight(path, kernel, step)


def _quantize_bias(module: nn.Module, b: jax.Array) -> jax.Array:
    p = module.policy
    return quant.fixed_point(b, bits=p.bias_bits, lsb=p.bias_lsb, signed=True)


@dataclasses.dataclass(frozen=True)
class Precision:
    """Operand and output dtypes of every conv/dense (the kernels accumulate in float32).

    ``Precision(bfloat16, float32)`` is exact for quantized operands (see
    ``COMPUTE_DTYPES``); ``Precision(bfloat16, bfloat16)`` also rounds the outputs to
    bfloat16, as mixed-precision training (torch autocast) does: cuDNN's fast bf16 kernels
    need bf16 outputs, so this is the fast mode on GPUs, and it changes forward values.
    """

    operands: Any
    outputs: Any


# config.compute_dtype -> the ``dtype`` given to models.create.
COMPUTE_DTYPES: dict[str, Any] = {
    "float32": None,  # operands in the input's precision
    "bfloat16": jnp.bfloat16,  # bf16 operands, float32 outputs: exact for <= 8-bit operands
    "bfloat16_outputs": Precision(jnp.bfloat16, jnp.bfloat16),  # bf16 outputs too: fast, inexact
}


def _operands(x: jax.Array, w: jax.Array, dtype: Any) -> tuple[jax.Array, jax.Array, Any]:
    """Casts both operands to the compute dtype; returns them and the output dtype.

    ``dtype``: None (input precision), a dtype (operands; float32 outputs), or a Precision.
    """
    if dtype is None:
        dt = jnp.promote_types(x.dtype, w.dtype)
        return x.astype(dt), w.astype(dt), None
    if isinstance(dtype, Precision):
        return x.astype(dtype.operands), w.astype(dtype.operands), dtype.outputs
    return x.astype(dtype), w.astype(dtype), jnp.float32


class Conv(nn.Module):
    """2-D convolution (NHWC, HWIO kernel) with explicit torch-style padding.

    ``dtype`` sets the operand dtype (e.g. bfloat16: exact for quantized operands of at
    most 8 bits) with float32 accumulation, or a ``Precision``; None computes in the
    input's precision.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: Padding = ((0, 0), (0, 0))
    use_bias: bool = False
    feature_group_count: int = 1
    policy: Policy | None = None
    dtype: Any = None
    kernel_init: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        if in_features % self.feature_group_count:
            raise ValueError(f"{_path(self)}: {in_features} input channels do not split into "
                             f"{self.feature_group_count} groups")
        shape = (*self.kernel_size, in_features // self.feature_group_count, self.features)
        kernel = _kernel(self, self.param("kernel", self.kernel_init, shape, jnp.float32))
        lhs, rhs, acc = _operands(x, kernel, self.dtype)
        y = jax.lax.conv_general_dilated(
            lhs, rhs, window_strides=self.strides, padding=[tuple(p) for p in self.padding],
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
            feature_group_count=self.feature_group_count, preferred_element_type=acc,
        )
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if _active(self):
                bias = _quantize_bias(self, bias)
            y = y + bias.astype(y.dtype)
        return y


class Dense(nn.Module):
    """Fully connected layer; kernel stored (in, out) like Flax (torch's weight.T)."""

    features: int
    use_bias: bool = True
    policy: Policy | None = None
    dtype: Any = None
    kernel_init: Initializer = nn.initializers.lecun_normal()
    bias_init: Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = _kernel(self, self.param("kernel", self.kernel_init,
                                          (x.shape[-1], self.features), jnp.float32))
        lhs, rhs, acc = _operands(x, kernel, self.dtype)
        y = jax.lax.dot_general(lhs, rhs, (((lhs.ndim - 1,), (0,)), ((), ())),
                                preferred_element_type=acc)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), jnp.float32)
            if _active(self):
                bias = _quantize_bias(self, bias)
            y = y + bias.astype(y.dtype)
        return y


def fold_batch_norm(gamma: jax.Array, beta: jax.Array, mean: jax.Array, var: jax.Array,
                    epsilon: float) -> tuple[jax.Array, jax.Array]:
    """BatchNorm as ``y = x s + t``: ``s = γ / sqrt(v + ε)``, ``t = β - μ s`` (the exporter
    folds the running statistics with this very function)."""
    s = gamma * jax.lax.rsqrt(var + epsilon)
    return s, beta - mean * s


class BatchNorm(nn.Module):
    """BatchNorm in torch's semantics, applied in its folded form ``y = x s + t``.

    ``s = γ / sqrt(v + ε)`` and ``t = β - μ s`` (batch statistics in training, running
    averages in eval). With a policy (and ``policy.quantize_bn``) s is signed 8-bit with
    l = -4 and t signed 32-bit with l = -16. Running statistics follow torch: momentum
    0.1 (Flax's 0.9) and the *unbiased* batch variance in the running average.

    ``train`` is given either as a field (a network binds it once in its layer
    constructors, as Flax's ``use_running_average``) or to ``__call__``, not both.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    policy: Policy | None = None
    train: bool | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool | None = None) -> jax.Array:
        train = nn.merge_param("train", self.train, train)
        c = x.shape[-1]
        # Statistics, scale/shift and their gradients in (at least) float32 whatever x's
        # dtype, as cuDNN's BN does for bf16 tensors; only the output takes x's dtype.
        xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))  # f64 stays f64
        gamma = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
        beta = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
        ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(xf, axes)
            var = jnp.mean(jnp.square(xf - mean), axes)
            if not self.is_initializing():
                n = x.size // c
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1 - m) * jax.lax.stop_gradient(mean)
                ra_var.value = m * ra_var.value + (1 - m) * jax.lax.stop_gradient(unbiased)
        else:
            mean, var = ra_mean.value, ra_var.value
        s, t = fold_batch_norm(gamma, beta, mean, var, self.epsilon)
        if _active(self) and self.policy.quantize_bn:
            p = self.policy
            s = quant.fixed_point(s, bits=p.bn_scale_bits, lsb=p.bn_scale_lsb, signed=True)
            t = quant.fixed_point(t, bits=p.bn_shift_bits, lsb=p.bn_shift_lsb, signed=True)
        return (xf * s.astype(xf.dtype) + t.astype(xf.dtype)).astype(x.dtype)


class ActQuant(nn.Module):
    """Optional ReLU, then the activation quantizer with a calibrated, frozen l (FAQ) or a
    learned step (LSQ).

    Unsigned after a ReLU (FAQ's ReLU outputs); ``signed=True`` for re-quantizing tensors
    that may be negative. FAQ's l lives in ``quant/lsb``; until calibration it holds the
    uncalibrated value of FAQ's control experiment (y_max = 2^(b/2) - 1). LSQ's step lives
    in ``params`` (``Policy.act_step_param``); it starts at that same uncalibrated step, and
    the calibration pass sows ``lsq.init_step`` of its batch (the paper's first-batch start).
    """

    relu: bool = True
    signed: bool = False
    policy: Policy | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if self.relu:
            x = nn.relu(x)
        if self.policy is None:
            return x
        bits = self.policy.act_bits(_path(self))
        name = self.policy.act_step_param(_path(self))
        if name is not None:
            return self._lsq(x, bits, name)
        lsb = self.variable(QUANT, "lsb", lambda: jnp.asarray(
            quant.uncalibrated_activation_lsb(bits, self.signed), jnp.float32))
        if _calibrating(self):
            stat = jnp.abs(x) if self.signed else x
            y_max = quant.percentile(stat, self.policy.percentile(bits))
            self.sow(CALIB, "lsb", quant.activation_lsb(y_max, bits=bits, signed=self.signed))
            return x
        return quant.fixed_point(x, bits=bits, lsb=lsb.value, signed=self.signed)

    def _lsq(self, x: jax.Array, bits: int, name: str) -> jax.Array:
        pow2 = self.policy.lsq_pow2
        start = 2.0 ** quant.uncalibrated_activation_lsb(bits, self.signed)
        step = self.param(name, lambda _: lsq.to_param(start, pow2))
        if _calibrating(self):
            self.sow(CALIB, name, lsq.to_param(lsq.init_step(x, bits, self.signed), pow2))
            return x
        # The gradient scale's N: features per example (the paper's N_F).
        return lsq.quantize(x, lsq.step_of(step, pow2), bits=bits, signed=self.signed,
                            num_elements=x.size // x.shape[0])


class InputQuant(nn.Module):
    """The normalised image as signed fixed point (8-bit, l = -5 by default)."""

    policy: Policy | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        if not _active(self):
            return x
        p = self.policy
        return quant.fixed_point(x, bits=p.input_bits, lsb=p.input_lsb, signed=True)


class Defs(NamedTuple):
    """The layer constructors of one network, bound to its policy, dtype and train mode."""

    conv: ModuleDef  # Conv(features, kernel_size, strides, padding, ...)
    norm: ModuleDef  # BatchNorm(...) -> called on x alone
    act: ModuleDef  # ActQuant(...): ReLU + quantizer; act(relu=False) re-quantizes
    dense: ModuleDef  # Dense(features, ...)


def defs(policy: Policy | None, dtype: Any = None, train: bool = False) -> Defs:
    """``conv, norm, act, dense`` for a network's ``__call__`` to build once and hand to its
    blocks (the Flax ImageNet example's ``conv: ModuleDef``): every quantizer reads
    ``policy`` (None: the float layers), convs and dense layers compute in ``dtype``, and
    BatchNorm runs in ``train`` mode."""
    return Defs(functools.partial(Conv, policy=policy, dtype=dtype),
                functools.partial(BatchNorm, policy=policy, train=train),
                functools.partial(ActQuant, policy=policy),
                functools.partial(Dense, policy=policy, dtype=dtype))


def torch_pad(kernel: int, padding: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Symmetric torch padding; 'SAME' differs from it for strided convs."""
    del kernel
    return ((padding, padding), (padding, padding))


def max_pool(x: jax.Array, window: int, stride: int, padding: int) -> jax.Array:
    """torch MaxPool2d (padding with -inf, floor mode)."""
    return nn.max_pool(x, (window, window), (stride, stride), torch_pad(window, padding))


def avg_pool(x: jax.Array, window: int, stride: int, padding: int = 0,
             count_include_pad: bool = True) -> jax.Array:
    """torch AvgPool2d (floor mode); zero padding counted unless told otherwise."""
    return nn.avg_pool(x, (window, window), (stride, stride), torch_pad(window, padding),
                       count_include_pad=count_include_pad)


def adaptive_pool_bins(n: int, o: int) -> list[tuple[int, int]]:
    """torch AdaptiveAvgPool's bins along one axis: bin i spans [floor(i n / o),
    ceil((i + 1) n / o))."""
    return [((i * n) // o, -((-(i + 1) * n) // o)) for i in range(o)]


def adaptive_pool_averages(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Whether some bin of an adaptive pool holds more than one element (then its output is
    an average that must be re-quantized before a conv/dense reads it; otherwise every
    output is a copy of an input element: the identity, or a replication)."""
    return any(b - a > 1 for n, o in zip(in_hw, out_hw, strict=True)
               for a, b in adaptive_pool_bins(n, o))


def adaptive_avg_pool(x: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """torch AdaptiveAvgPool2d (bins: :func:`adaptive_pool_bins`)."""
    h, w = x.shape[1:3]
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return x
    rows = []
    for h0, h1 in adaptive_pool_bins(h, oh):
        cols = [jnp.mean(x[:, h0:h1, w0:w1, :], axis=(1, 2))
                for w0, w1 in adaptive_pool_bins(w, ow)]
        rows.append(jnp.stack(cols, axis=1))
    return jnp.stack(rows, axis=1)


def global_avg_pool(x: jax.Array) -> jax.Array:
    """Mean over H and W (torch's adaptive_avg_pool2d(1) + flatten)."""
    return jnp.mean(x, axis=(1, 2))


def subsample_pad(x: jax.Array, stride: int, pad_before: int, pad_after: int) -> jax.Array:
    """Every ``stride``-th pixel (``x[:, ::s, ::s, :]``), then zero channels before and after.

    He et al.'s option-A shortcut (``stride=2``, ``planes // 4`` zero channels on each side):
    no parameters, and exact on fixed-point tensors (it moves codes and adds zeros).
    """
    y = x[:, ::stride, ::stride, :]
    return jnp.pad(y, ((0, 0), (0, 0), (0, 0), (pad_before, pad_after)))
