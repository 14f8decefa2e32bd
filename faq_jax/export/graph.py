"""The layer graph of a quantized Flax model, read from its jaxpr (for the exporter).

While tracing, every quantized block (Conv, Dense, BatchNorm, ActQuant, InputQuant) and every
pooling or shortcut function of ``layers`` (``subsample_pad``: the option-A shortcut) is
replaced by one opaque primitive that carries its module path and static attributes; what
remains between them in the jaxpr is residual adds, concatenations, transposes and reshapes.
Operations before the input quantizer (Inception's ``transform_input``) are float
preprocessing and are left out of the graph.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import flax.linen as nn
import jax

from faq_jax import layers
from faq_jax.export.intnet import ExportError

_op_p = jax.extend.core.Primitive("faq_export_op")
_op_p.multiple_results = False
_op_p.def_abstract_eval(lambda *args, kind, attrs, shape, dtype: jax.core.ShapedArray(
    shape, dtype))
_LEAVES = {layers.Conv: "conv", layers.Dense: "dense", layers.BatchNorm: "bn",
           layers.ActQuant: "requant", layers.InputQuant: "input"}
_POOLS = ("max_pool", "avg_pool", "adaptive_avg_pool", "global_avg_pool")
_FUNCTIONS = (*_POOLS, "subsample_pad")  # layers' functions traced as one graph op each


def _bind(kind: str, attrs: tuple, x: jax.Array, y: jax.Array) -> jax.Array:
    return _op_p.bind(x, kind=kind, attrs=attrs, shape=tuple(y.shape), dtype=y.dtype)


def _interceptor(next_fun, args, kwargs, context):
    kind = _LEAVES.get(type(context.module))
    if kind is None or context.method_name != "__call__":
        return next_fun(*args, **kwargs)
    y = next_fun(*args, **kwargs)  # keeps Flax's variable bookkeeping; its eqns are dead
    m = context.module
    attrs = {"path": "/".join(m.path)}
    if kind == "conv":
        attrs.update(strides=tuple(m.strides), groups=int(m.feature_group_count),
                     padding=tuple(tuple(int(v) for v in q) for q in m.padding))
    elif kind == "bn":
        attrs.update(epsilon=float(m.epsilon))
    elif kind == "requant":
        attrs.update(relu=bool(m.relu), signed=bool(m.signed))
    return _bind(kind, tuple(sorted(attrs.items())), args[0], y)


@contextlib.contextmanager
def _opaque_functions():
    """Routes ``layers``' pooling and shortcut functions through graph ops while tracing."""
    saved = {name: getattr(layers, name) for name in _FUNCTIONS}

    def wrap(name):
        sig = inspect.signature(saved[name])

        def pool(x, *a, **kw):
            # Every argument after x, by position, defaults filled in: however the model
            # spelled the call, the graph node reads the same.
            bound = sig.bind(x, *a, **kw)
            bound.apply_defaults()
            args = tuple(bound.arguments.values())[1:]
            return _bind(name, (("args", args),), x, saved[name](x, *a, **kw))
        return pool

    try:
        for name in _FUNCTIONS:
            setattr(layers, name, wrap(name))
        yield
    finally:
        for name, fn in saved.items():
            setattr(layers, name, fn)


_PASSTHROUGH = ("convert_element_type", "copy", "copy_p")
_CALLS = ("pjit", "jit", "closed_call", "core_call")


def trace(model: nn.Module, variables: dict[str, Any], x: jax.ShapeDtypeStruct
                 ) -> list[dict[str, Any]]:
    """Graph nodes (id, op, inputs, attrs) of ``model`` in eval mode, in execution order."""
    with _opaque_functions(), nn.intercept_methods(_interceptor):
        closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
    nodes: list[dict[str, Any]] = []
    env: dict[Any, int] = {}  # jaxpr var -> node id

    def add(op, inputs, **attrs):
        nodes.append(dict(id=len(nodes), op=op, inputs=list(inputs), **attrs))
        return len(nodes) - 1

    def walk(jaxpr, invals):
        for var, val in zip(jaxpr.invars, invals, strict=True):
            if val is not None:
                env[var] = val
        live = _live_eqns(jaxpr)
        for eqn in (e for e, keep in zip(jaxpr.eqns, live, strict=True) if keep):
            name = eqn.primitive.name
            ins = [env.get(v) if not isinstance(v, jax.extend.core.Literal) else None
                   for v in eqn.invars]
            n0 = len(nodes)
            if name == "faq_export_op":
                attrs = dict(eqn.params["attrs"])
                kind = eqn.params["kind"]
                if kind == "input":
                    out = add("input", [], path=attrs["path"],
                              shape=[int(d) for d in eqn.outvars[0].aval.shape[1:]])
                elif ins[0] is None:
                    raise ExportError(f"{attrs.get('path', kind)}: its input does not come from "
                                      "the network's input quantizer")
                elif kind in _FUNCTIONS:
                    out = add(kind, ins[:1], args=list(attrs.pop("args")), **attrs)
                else:
                    out = add(kind, ins[:1], **attrs)
                env[eqn.outvars[0]] = out
            elif all(i is None for i in ins):
                continue  # preprocessing before the input quantizer (e.g. transform_input)
            elif name in _CALLS:
                inner = eqn.params.get("jaxpr") or eqn.params.get("call_jaxpr")
                inner = getattr(inner, "jaxpr", inner)
                walk(inner, ins)
                for o, io_ in zip(eqn.outvars, inner.outvars, strict=True):
                    if io_ in env:
                        env[o] = env[io_]
            elif name in _PASSTHROUGH:
                env[eqn.outvars[0]] = ins[0]
            elif name == "add" and None not in ins:
                env[eqn.outvars[0]] = add("add", ins)
            elif name == "concatenate" and None not in ins:
                env[eqn.outvars[0]] = add("concat", ins, axis=int(eqn.params["dimension"]))
            elif name == "transpose":
                env[eqn.outvars[0]] = add("transpose", ins, perm=list(eqn.params["permutation"]))
            elif name == "reshape":
                shape = [int(d) for d in eqn.params["new_sizes"][1:]]
                env[eqn.outvars[0]] = add("reshape", ins, shape=shape)
            else:
                raise ExportError(f"cannot export the operation {name!r} "
                                  f"({eqn.source_info.name_stack}): not an integer graph op")
            if len(nodes) > n0 and name not in _CALLS:  # logical NHWC shape, no batch axis
                nodes[-1]["shape_out"] = [int(d) for d in eqn.outvars[0].aval.shape[1:]]

    walk(closed.jaxpr, [None] * len(closed.jaxpr.invars))
    out = closed.jaxpr.outvars[0]
    if out not in env:
        raise ExportError("the model's output does not depend on its input quantizer")
    add("output", [env[out]])
    return nodes


def _live_eqns(jaxpr) -> list[bool]:
    """Which equations contribute to the outputs (backward liveness)."""
    needed = {v for v in jaxpr.outvars if not isinstance(v, jax.extend.core.Literal)}
    live = [False] * len(jaxpr.eqns)
    for i in range(len(jaxpr.eqns) - 1, -1, -1):
        eqn = jaxpr.eqns[i]
        if any(o in needed for o in eqn.outvars):
            live[i] = True
            needed.update(v for v in eqn.invars if not isinstance(v, jax.extend.core.Literal))
    return live


