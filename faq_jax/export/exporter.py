"""Export a fine-tuned FAQ network as an integer-only network (FAQ.md sections 1-2).

``export(model, variables)`` traces the quantized model once and returns an
:class:`~faq_jax.export.intnet.IntegerNetwork`: the layer graph (JSON) plus integer
constants (NumPy):

- conv/dense weights: signed b-bit codes (int8) with their per-tensor l;
- folded BatchNorm ``y = x s + t``: s as 8-bit codes (l = -4), t as 32-bit codes (l = -16);
- biases: 32-bit codes (l = -16); every activation quantizer: bits, signedness, its l.

Every constant is computed by the functions the simulated network uses
(``Policy.weight_grid``, ``quant.to_codes``, ``layers.fold_batch_norm`` in float32 from the
running statistics), so the integer network *is* the simulated one. The file format is
specified in ``docs/export.md``.

LSQ quantizers (``Policy.method_of``) export the same way when their learned steps are powers
of two (``quant.lsq_pow2``): ``l = log2 s``, weight codes ``lsq.codes`` (LSQ's signed range
reaches ``-2^(b-1)``). A step that is not a power of two has no integer form here: an
ExportError names the layer.
"""

from __future__ import annotations

import dataclasses
import functools
import zlib
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from faq_jax import calibrate, keypaths, layers, lsq, quant
from faq_jax.export import graph, intnet


def _codes(x: jax.Array, bits: int, lsb: int) -> tuple[jax.Array, jax.Array]:
    return quant.codes_and_overflow(x, bits=bits, lsb=lsb, signed=True)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _constants(leaves: dict[str, dict[str, jax.Array]], specs: tuple, policy) -> dict:
    """Every exported constant in one compiled pass (the simulated network's functions)."""
    out = {}
    for op, path, eps in specs:
        v = leaves[path]
        if op in ("conv", "dense") and policy.weight_step_param(path) is not None:
            s = lsq.step_of(v[policy.weight_step_param(path)], policy.lsq_pow2)
            out[path] = {"w_s": s, "w": lsq.codes(v["kernel"], s, bits=policy.weight_bits(path),
                                                  signed=True)}
            if "bias" in v:
                out[path]["b"] = _codes(v["bias"], policy.bias_bits, policy.bias_lsb)
        elif op in ("conv", "dense"):
            bits, lsb = policy.weight_grid(path, v["kernel"])
            out[path] = {"w_l": lsb, "w": quant.to_codes(v["kernel"], bits=bits, lsb=lsb,
                                                          signed=True)}
            if "bias" in v:
                out[path]["b"] = _codes(v["bias"], policy.bias_bits, policy.bias_lsb)
        else:
            s, t = layers.fold_batch_norm(v["scale"], v["bias"], v["mean"], v["var"], eps)
            out[path] = {"s": _codes(s, policy.bn_scale_bits, policy.bn_scale_lsb),
                         "t": _codes(t, policy.bn_shift_bits, policy.bn_shift_lsb)}
    return out


def export(model: nn.Module, variables: dict[str, Any], *,
           input_shape: tuple[int, int, int] | None = None,
           allow_uncalibrated: bool = False) -> intnet.IntegerNetwork:
    """Turns a quantized model and its variables into an integer network.

    Args:
      model: a model built with a policy (``models.create(arch, policy=...)``).
      variables: ``params``, ``batch_stats`` and the calibrated ``quant`` l's.
      input_shape: (H, W, C) the graph is traced at (default 75x75x3, the smallest input
        every zoo network accepts). The graph does not depend on H and W; its ONNX form
        (static H, W) and VGG's adaptive pool do.
      allow_uncalibrated: export even when every activation l still holds its uncalibrated
        default (``model.init`` fills them; FAQ's no-calibration control experiment).

    Returns:
      The integer network; ``faq_jax.export.executor.run`` executes it.
    """
    policy = getattr(model, "policy", None)
    if policy is None:
        raise intnet.ExportError("the model has no precision policy (a float network): build "
                                 "it with models.create(arch, policy=...) and fine-tune it first")
    if not policy.quantize_bn:
        raise intnet.ExportError("policy.quantize_bn is False: BatchNorm constants are float "
                                 "and have no integer form")
    if "quant" not in variables and not policy.uses_lsq():
        raise intnet.ExportError("variables have no 'quant' collection (activation l's): "
                                 "calibrate the network before exporting")
    variables = {k: variables[k] for k in ("params", "batch_stats", "quant") if k in variables}
    shape = tuple(input_shape or (75, 75, 3))
    x = jax.ShapeDtypeStruct((1, *shape), jnp.float32)
    nodes = graph.trace(model, variables, x)
    arrays: dict[str, np.ndarray] = {}
    params, stats = variables["params"], variables.get("batch_stats", {})
    qv = variables.get("quant", {})
    specs, leaves = [], {}
    for node in nodes:
        path = node.get("path")
        if node["op"] in ("conv", "dense"):
            specs.append((node["op"], path, None))
            leaves[path] = dict(keypaths.get(params, path))
        elif node["op"] == "bn":
            specs.append(("bn", path, float(node.pop("epsilon"))))
            leaves[path] = {**keypaths.get(params, path), **keypaths.get(stats, path)}
    consts = jax.device_get(_constants(leaves, tuple(specs), policy))

    def check(path, what, pair, bits, lsb):
        codes, overflow = pair
        if overflow:
            raise intnet.ExportError(f"{path} {what} overflows {bits} bits at l={lsb}")
        return np.asarray(codes)

    calibrated = []  # FAQ's activation quantizers (their l's come from calibration)
    for node in nodes:
        path, c = node.get("path"), consts.get(node.get("path"))
        if node["op"] == "input":
            node.update(bits=policy.input_bits, signed=True, l=policy.input_lsb)
        elif node["op"] in ("conv", "dense"):
            bits = policy.weight_bits(path)
            w_l = int(c["w_l"]) if "w_l" in c else _step_exponent(path, "weight", c["w_s"])
            node.update(w=f"{path}/w", w_bits=bits, w_l=w_l, bias=None)
            arrays[node["w"]] = np.asarray(c["w"]).astype(intnet.int_dtype(bits, True))
            if node["op"] == "conv":
                node.update(strides=list(node["strides"]),
                            padding=[list(q) for q in node["padding"]])
            if "b" in c:
                node.update(bias=f"{path}/b", bias_l=policy.bias_lsb)
                arrays[node["bias"]] = check(path, "bias", c["b"], policy.bias_bits,
                                             policy.bias_lsb).astype(np.int32)
        elif node["op"] == "bn":
            node.update(s=f"{path}/s", s_l=policy.bn_scale_lsb, t=f"{path}/t",
                        t_l=policy.bn_shift_lsb)
            # s saturating at 8 bits is the simulated quantizer's clip (kept, not an error).
            arrays[node["s"]] = np.asarray(c["s"][0]).astype(
                intnet.int_dtype(policy.bn_scale_bits, True))
            arrays[node["t"]] = check(path, "BN shift t", c["t"], policy.bn_shift_bits,
                                      policy.bn_shift_lsb).astype(np.int32)
        elif node["op"] == "requant" and policy.act_step_param(path) is not None:
            if node["signed"]:
                raise intnet.ExportError(
                    f"{path}: a signed LSQ activation quantizer (codes down to -2^(b-1)); the "
                    f"{intnet.FORMAT} v{intnet.VERSION} format holds symmetric signed codes only")
            raw = keypaths.get(params, path)[policy.act_step_param(path)]
            s = jax.device_get(lsq.step_of(jnp.asarray(raw), policy.lsq_pow2))
            node.update(bits=policy.act_bits(path), l=_step_exponent(path, "activation", s))
        elif node["op"] == "requant":
            calibrated.append(node)
            lsb = np.asarray(keypaths.get(qv, path)["lsb"])
            if lsb.shape != () or lsb != np.round(lsb):
                raise intnet.ExportError(f"{path}: activation l {lsb} is not one integer")
            node.update(bits=policy.act_bits(path), l=int(lsb))
    if calibrated and not allow_uncalibrated and all(
            n["l"] == quant.uncalibrated_activation_lsb(n["bits"], n["signed"])
            for n in calibrated):
        raise intnet.ExportError(
            "every activation l still holds its uncalibrated default (the value model.init "
            "gives): calibrate the network before exporting (faq_jax.calibrate), or pass "
            "allow_uncalibrated=True if that is deliberate")
    header = dict(format=intnet.FORMAT, version=intnet.VERSION, input_shape=list(shape),
                  nodes=nodes, layout="NHWC", policy=dataclasses.asdict(policy))
    return intnet.IntegerNetwork(header, arrays)


def _step_exponent(path: str, what: str, s: Any) -> int:
    """l of an LSQ step ``s = 2^l``; ExportError naming the layer when s is no power of two."""
    s = np.asarray(s)
    l = lsq.pow2_exponent(s) if s.shape == () else None  # noqa: E741 - the paper's l
    if l is None:
        raise intnet.ExportError(
            f"{path}: its learned LSQ {what} step {s} is not a power of two, so the layer has "
            "no fixed-point (integer) form. Train with quant.lsq_pow2=True (steps learned as "
            "powers of two) to export an LSQ network.")
    return l


def random_variables(model: nn.Module, input_shape: tuple[int, int, int], *, seed: int = 0,
                     batch: int = 2, calib_batches: int = 2) -> dict[str, Any]:
    """Random weights, random BN statistics and calibrated l's (tests and benchmarks).

    BN: γ ~ U(0.5, 1.5), β ~ N(0, 0.1²), running mean ~ N(0, 0.2²), var ~ U(0.5, 2); the
    activation l's (and LSQ's steps) come from ``calibrate.initialize`` on ``calib_batches``
    N(0, 1) batches.
    """
    key = jax.random.key(seed)
    x = jax.random.normal(key, (batch, *input_shape))
    variables = dict(model.init(jax.random.fold_in(key, 1), x))

    def perturb(path, a):
        # crc32, not hash(): str hashes change per process, these networks must not.
        k = jax.random.fold_in(key, zlib.crc32(jax.tree_util.keystr(path).encode()) % (2**31))
        name = keypaths.key_name(path[-1])
        if name == "var":
            return jax.random.uniform(k, a.shape, minval=0.5, maxval=2.0)
        if name == "mean":
            return 0.2 * jax.random.normal(k, a.shape)
        if name == "scale":
            return jax.random.uniform(k, a.shape, minval=0.5, maxval=1.5)
        if name == "bias":
            return 0.1 * jax.random.normal(k, a.shape)
        return a

    for coll in ("params", "batch_stats"):
        variables[coll] = jax.tree_util.tree_map_with_path(perturb, variables[coll])
    batches = [jax.random.normal(jax.random.fold_in(key, 100 + i), x.shape)
               for i in range(calib_batches)]
    return calibrate.initialize(model, variables, batches)
