"""Precision policy: which bit width every weight and activation quantizer uses.

A policy is data. It has default weight and activation widths and an ordered list of
:class:`Rule` s; the last rule that matches a layer wins. A rule matches a module path
(``"layer4_1/conv2"``; ``fnmatch`` globs such as ``"layer1_*"``, where ``*`` also
matches ``/``) or a role that every
model names for itself:

- ``@first``: the first conv (reads the image);
- ``@last``: the classifier (its weights);
- ``@last_act``: the last ReLU, which feeds the classifier;
- ``@classifier_input``: the re-quantizer on the classifier's input (after pooling).

FAQ's 4-bit networks (FAQ.md section 4) keep ``@first``/``@last`` weights and the
``@last_act``/``@classifier_input`` activations at 8 bits: :func:`paper_policy` builds
exactly that; W8A8, W4A8, W2A2 or any mix is the same data with other numbers.

A policy also owns the weight quantizer's recipe (:meth:`Policy.weight_grid`,
:meth:`Policy.quantize_weight`): the layers, the gradient-noise measure and the exporter all
quantize a kernel through it. :func:`from_config` builds the policy a run's config describes.

Which method sets the step sizes is policy data too (``method``, per layer through the rules
like the widths): ``"faq"`` (FAQ: weights' l from k·σ every step, activations' l calibrated
once and frozen) or ``"lsq"`` (:mod:`faq_jax.lsq`: every step learned, starting from the
weights and one batch). Widths, the 8-bit first/last layers, BatchNorm constants, biases and
the input quantizer are the same for both.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable, Mapping
from typing import Any

import jax

from faq_jax import lsq, quant

ROLES = ("first", "last", "last_act", "classifier_input")
METHODS = ("faq", "lsq")  # how a quantizer's step is set: FAQ's rules, or LSQ's learned step


def _check_method(method: str, what: str) -> str:
    if method not in METHODS:
        raise ValueError(f"{what}={method!r}: the quantization method must be one of {METHODS}")
    return method


@dataclasses.dataclass(frozen=True)
class Rule:
    """Overrides the widths (and the method) of the layers that ``match`` names (None keeps
    the policy's)."""

    match: str
    w_bits: int | None = None
    a_bits: int | None = None
    method: str | None = None  # "faq" | "lsq" for the matched weights and activations

    def __post_init__(self):
        if not isinstance(self.match, str) or not self.match:
            raise ValueError(f"Rule.match must be a non-empty string, got {self.match!r}")
        if self.match.startswith("@") and self.match[1:] not in ROLES:
            raise ValueError(f"unknown role {self.match!r} in rule; roles are "
                             f"{', '.join('@' + r for r in ROLES)}")
        if self.w_bits is not None:
            quant.check_bits(self.w_bits, f"w_bits of rule {self.match!r}")
        if self.a_bits is not None:
            quant.check_bits(self.a_bits, f"a_bits of rule {self.match!r}")
        if self.method is not None:
            _check_method(self.method, f"method of rule {self.match!r}")


@dataclasses.dataclass(frozen=True)
class Policy:
    """Bit widths and fixed l's of a fully fixed-point network (FAQ.md section 2)."""

    w_bits: int = 8  # conv/dense weights, signed
    a_bits: int = 8  # ReLU outputs (unsigned) and re-quantized inputs
    rules: tuple[Rule, ...] = ()
    weight_clip_std: float = 4.12  # k: clip at k*std(w) below maxabs_bits (paper, 4-bit)
    maxabs_bits: int = 8  # widths >= this use Δ = max|w| / (2^(b-1)-1), no clipping
    quantize_bn: bool = True  # folded BN constants s, t on their fixed-point grids
    bn_scale_bits: int = 8  # s = γ / sqrt(v + ε): signed 8-bit, l = -b/2
    bn_scale_lsb: int = -4
    bn_shift_bits: int = 32  # t = β - μ s: signed 32-bit
    bn_shift_lsb: int = -16
    bias_bits: int = 32  # conv/dense biases: signed 32-bit
    bias_lsb: int = -16
    input_bits: int = 8  # the normalised image: signed 8-bit, l = -5 covers ±3.97
    input_lsb: int = -5
    percentile_8bit: float = 99.99  # calibration percentile for >= maxabs_bits activations
    percentile_lowbit: float = 99.9  # ... and below 8 bits
    roles: tuple[tuple[str, str], ...] = ()  # (role, "|"-separated paths/globs), from the model
    method: str = "faq"  # "faq" | "lsq": how steps are set (rules may override per layer)
    lsq_pow2: bool = False  # LSQ: learn log2 s, power-of-two steps (an integer network)

    def __post_init__(self):
        for name in ("w_bits", "a_bits", "bn_scale_bits", "bn_shift_bits", "bias_bits",
                     "input_bits", "maxabs_bits"):
            quant.check_bits(getattr(self, name), name)
        for name in ("bn_scale_lsb", "bn_shift_lsb", "bias_lsb", "input_lsb"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer l, got {v!r}")
        if not self.weight_clip_std > 0:
            raise ValueError(f"weight_clip_std must be positive, got {self.weight_clip_std!r}")
        for name in ("percentile_8bit", "percentile_lowbit"):
            v = getattr(self, name)
            if not 0 < v <= 100:
                raise ValueError(f"{name} must lie in (0, 100], got {v!r}")
        _check_method(self.method, "method")
        if not isinstance(self.lsq_pow2, bool):
            raise ValueError(f"lsq_pow2 must be True or False, got {self.lsq_pow2!r}")
        rules = tuple(r if isinstance(r, Rule) else Rule(*r) for r in self.rules)
        object.__setattr__(self, "rules", rules)

    def with_roles(self, roles: Mapping[str, str]) -> Policy:
        """The policy bound to a model's role table (role -> module path)."""
        unknown = set(roles) - set(ROLES)
        if unknown:
            raise ValueError(f"unknown roles {sorted(unknown)}; roles are {ROLES}")
        return dataclasses.replace(self, roles=tuple(sorted(roles.items())))

    def _matches(self, rule: Rule, path: str) -> bool:
        if rule.match.startswith("@"):
            # A role names paths or globs, "|"-separated (Inception's last ReLUs are six
            # branch ReLUs).
            target = dict(self.roles).get(rule.match[1:])
            return target is not None and any(fnmatch.fnmatchcase(path, t)
                                              for t in target.split("|"))
        return fnmatch.fnmatchcase(path, rule.match)

    def weight_bits(self, path: str) -> int:
        """Weight width of the conv/dense at ``path``."""
        bits = self.w_bits
        for rule in self.rules:
            if rule.w_bits is not None and self._matches(rule, path):
                bits = rule.w_bits
        return bits

    def act_bits(self, path: str) -> int:
        """Width of the activation quantizer at ``path``."""
        bits = self.a_bits
        for rule in self.rules:
            if rule.a_bits is not None and self._matches(rule, path):
                bits = rule.a_bits
        return bits

    def method_of(self, path: str) -> str:
        """The method ("faq" or "lsq") of the weight or activation quantizer at ``path``."""
        method = self.method
        for rule in self.rules:
            if rule.method is not None and self._matches(rule, path):
                method = rule.method
        return method

    def uses_lsq(self) -> bool:
        """Whether any quantizer may be LSQ's (the policy's method, or a rule's)."""
        return self.method == "lsq" or any(r.method == "lsq" for r in self.rules)

    def weight_step_param(self, path: str) -> str | None:
        """Name of the learned LSQ step beside the kernel of the conv/dense at ``path`` (in
        ``params``), or None where FAQ sets the step."""
        if self.method_of(path) != "lsq":
            return None
        return lsq.param_name(weight=True, pow2=self.lsq_pow2)

    def act_step_param(self, path: str) -> str | None:
        """Name of the learned LSQ step of the activation quantizer at ``path`` (in
        ``params``), or None where FAQ's calibrated l (``quant`` collection) sets it."""
        if self.method_of(path) != "lsq":
            return None
        return lsq.param_name(weight=False, pow2=self.lsq_pow2)

    def clip_std(self, bits: int) -> float | None:
        """k of the weight rule for ``bits``, or None for the max-abs rule."""
        return None if bits >= self.maxabs_bits else self.weight_clip_std

    def weight_grid(self, path: str, w: jax.Array) -> tuple[int, jax.Array]:
        """(b, l) of the conv/dense kernel ``w`` at ``path``: its width from the rules, and
        ``quant.weight_lsb`` of ``w`` (recomputed from ``w`` at every step)."""
        bits = self.weight_bits(path)
        return bits, quant.weight_lsb(w, bits=bits, clip_std=self.clip_std(bits))

    def quantize_weight(self, path: str, w: jax.Array, step: jax.Array | None = None,
                        ) -> jax.Array:
        """The quantized kernel ``w`` of the conv/dense at ``path``, as the forward pass uses
        it: FAQ's Q_{b,l}(w) at :meth:`weight_grid`'s (b, l), or, for an LSQ layer, LSQ's
        quantizer with the learned ``step`` parameter (:meth:`weight_step_param`'s value)."""
        if self.method_of(path) == "lsq":
            if step is None:
                raise ValueError(f"{path}: an LSQ weight quantizer needs its learned step "
                                 f"(parameter {self.weight_step_param(path)!r})")
            return lsq.quantize(w, lsq.step_of(step, self.lsq_pow2),
                                bits=self.weight_bits(path), signed=True)
        bits, lsb = self.weight_grid(path, w)
        return quant.fixed_point(w, bits=bits, lsb=lsb, signed=True)

    def percentile(self, bits: int) -> float:
        """Calibration percentile for an activation of ``bits``: ``percentile_8bit`` (99.99)
        from ``maxabs_bits`` (8) up, ``percentile_lowbit`` (99.9) below."""
        return self.percentile_8bit if bits >= self.maxabs_bits else self.percentile_lowbit

    def validate(self, weight_paths: Iterable[str], act_paths: Iterable[str]) -> None:
        """Raises ValueError for a rule that names no layer of the model."""
        weight_paths, act_paths = list(weight_paths), list(act_paths)
        for rule in self.rules:
            paths = []
            if rule.w_bits is not None or rule.method is not None:
                paths += weight_paths
            if rule.a_bits is not None or rule.method is not None:
                paths += act_paths
            if rule.match.startswith("@") and rule.match[1:] not in dict(self.roles):
                raise ValueError(f"policy rule {rule.match!r}: this model has no such role "
                                 f"(it names {sorted(dict(self.roles))})")
            if not any(self._matches(rule, p) for p in paths):
                kind = "weight or activation" if rule.method is not None else "weight" \
                    if rule.a_bits is None else "activation" if rule.w_bits is None \
                    else "weight or activation"
                raise ValueError(
                    f"policy rule {rule.match!r} matches no {kind} quantizer of the model; "
                    f"{kind} quantizers are e.g. {sorted(paths)[:8]}"
                )


def paper_policy(w_bits: int, a_bits: int, **kwargs) -> Policy:
    """FAQ's policy (FAQ.md section 4): below 8 bits, first/last layers stay at 8 bits."""
    rules = []
    if w_bits < 8:
        rules += [Rule("@first", w_bits=8), Rule("@last", w_bits=8)]
    if a_bits < 8:
        rules += [Rule("@last_act", a_bits=8), Rule("@classifier_input", a_bits=8)]
    extra = tuple(kwargs.pop("rules", ()))
    return Policy(w_bits=w_bits, a_bits=a_bits, rules=tuple(rules) + extra, **kwargs)


def from_config(quant_config: Any, calib_config: Any) -> Policy | None:
    """The policy of a run's ``config.quant`` and ``config.calib`` (None: quantization off).

    Reads the fields by attribute (any ConfigDict-like object). ``quant.paper_rules`` adds
    :func:`paper_policy`'s 8-bit first/last layers below 8 bits; ``quant.rules`` are
    (match, w_bits, a_bits[, method]) tuples appended after them. ``quant.method`` and
    ``quant.lsq_pow2`` may be absent (configs written before LSQ): FAQ. Raises ValueError on
    bad values.
    """
    q, c = quant_config, calib_config
    if not q.enabled:
        return None
    kwargs = dict(
        rules=tuple(Rule(*r) for r in q.rules),
        weight_clip_std=q.weight_clip_std, maxabs_bits=q.maxabs_bits,
        quantize_bn=q.quantize_bn, bn_scale_bits=q.bn_scale_bits, bn_scale_lsb=q.bn_scale_lsb,
        bn_shift_bits=q.bn_shift_bits, bn_shift_lsb=q.bn_shift_lsb, bias_bits=q.bias_bits,
        bias_lsb=q.bias_lsb, input_bits=q.input_bits, input_lsb=q.input_lsb,
        percentile_8bit=c.percentile_8bit, percentile_lowbit=c.percentile_lowbit,
        method=getattr(q, "method", "faq"), lsq_pow2=bool(getattr(q, "lsq_pow2", False)),
    )
    if q.paper_rules:
        return paper_policy(q.w_bits, q.a_bits, **kwargs)
    return Policy(w_bits=q.w_bits, a_bits=q.a_bits, **kwargs)


W8A8 = paper_policy(8, 8)
W4A4 = paper_policy(4, 4)


def describe(policy: Policy | None) -> str:
    """A short name of the precision: ``fp32``, ``W4A4`` (FAQ's policy: 8-bit first and last
    layers below 8 bits), ``W4A4 all layers`` (no such exceptions), ``W4A4 + layer4_*: W2``
    (further rules, the first two named); LSQ's steps are named (``W4A4 LSQ``)."""
    if policy is None:
        return "fp32"
    name = f"W{policy.w_bits}A{policy.a_bits}" + (" LSQ" if policy.method == "lsq" else "")
    paper = paper_policy(policy.w_bits, policy.a_bits, method=policy.method,
                         lsq_pow2=policy.lsq_pow2).rules
    rules = policy.rules
    if paper and rules[:len(paper)] == paper:
        rules = rules[len(paper):]
    elif paper:
        name += " all layers"
    if not rules:
        return name
    shown = [f"{r.match}: " + "/".join([f"{k}{b}" for k, b in (("W", r.w_bits),
                                                              ("A", r.a_bits)) if b is not None]
                                       + ([r.method.upper()] if r.method else []))
             for r in rules[:2]]
    more = f" and {len(rules) - 2} more" if len(rules) > 2 else ""
    return f"{name} + {', '.join(shown)}{more}"
