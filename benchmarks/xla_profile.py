"""Per-operation time of a jitted JAX function, read from a ``jax.profiler`` trace.

Two halves, both needing nothing but jax:

- ``trace_ops`` / ``op_times``: run a function under ``jax.profiler.trace`` and add up the
  time of every XLA operation of one HLO module, read back with ``jax.profiler.ProfileData``.
  CPU: events of the host plane's threads (XLA:CPU's thunk executor tags each with the stats
  ``hlo_op`` and ``hlo_module``). GPU: kernel events of the device planes
  (``/device:GPU:<n>``, lines ``Stream #<id>(...)``); the CUPTI collector copies the keys of
  XLA's launch annotation (``XlaModule:#hlo_module=...#::Thunk:#hlo_op=...#``) onto each
  kernel (and memcpy) event as the stats ``hlo_op``, ``hlo_module`` (openxla/xla,
  ``xla/backends/profiler/gpu/cupti_collector.cc``). The host's launch events of a GPU run
  are left out, so each kernel counts once. Derived timelines ("XLA Ops", "Steps") are built
  by TensorBoard's converter, not written to the raw trace, and are skipped if present.
- ``hlo_categories``: each instruction of the optimized HLO text put in a category:
  ``conv/dot`` (convolutions, matmuls, cuDNN/cuBLAS/oneDNN/YNNPACK calls, fused or not),
  ``quantizer`` (fusions holding a ``floor``, FAQ's only one), ``reduction``, ``pool``,
  ``layout`` (data movement only) and ``elementwise`` (the other fusions).
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
from collections.abc import Callable, Iterable

import jax
from jax.profiler import ProfileData

CATEGORIES = ("conv/dot", "quantizer", "reduction", "pool", "layout", "elementwise")
_LAYOUT = {"copy", "transpose", "reverse", "pad", "slice", "dynamic-slice", "concatenate",
           "bitcast", "reshape", "broadcast", "parameter", "constant", "tuple",
           "get-tuple-element", "dynamic-update-slice", "iota", "copy-start", "copy-done"}
_CONV_TARGET = re.compile(r"conv|gemm|matmul|cublas|cudnn|onednn|mkl", re.I)

_COMP = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")  # unindented "name (...) -> ... {"
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*.*?\s([a-z][\w\-]*)\((.*)$")


def hlo_categories(hlo: str) -> dict[str, str]:
    """HLO instruction name -> category, for every instruction of the optimized module."""
    ops: dict[str, set[str]] = collections.defaultdict(set)  # computation -> its opcodes
    calls: dict[str, set[str]] = collections.defaultdict(set)  # computation -> callees
    instrs: list[tuple[str, str, str]] = []  # (name, opcode, rest)
    comp = ""
    for line in hlo.splitlines():
        m = _COMP.match(line)
        if m and not line[:1].isspace():
            comp = m.group(1)
            continue
        m = _INSTR.match(line)
        if not m:
            continue
        name, opcode, rest = m.groups()
        if opcode == "custom-call":
            t = re.search(r'custom_call_target="([^"]+)"', rest)
            opcode = f"custom-call:{t.group(1) if t else ''}"
        ops[comp].add(opcode)
        for callee in re.findall(r"(?:calls|to_apply|body|condition)=%?([\w.\-]+)", rest):
            calls[comp].add(callee)
        instrs.append((name, opcode, rest))

    def reach(c: str, seen: set[str]) -> set[str]:
        if c in seen:
            return set()
        seen.add(c)
        out = set(ops[c])
        for callee in calls[c]:
            out |= reach(callee, seen)
        return out

    cats = {}
    for name, opcode, rest in instrs:
        inner = {opcode}
        for callee in re.findall(r"calls=%?([\w.\-]+)", rest):
            inner |= reach(callee, set())
        cats[name] = _category(inner)
    return cats


def _category(opcodes: set[str]) -> str:
    if opcodes & {"convolution", "dot"} or any(
            o.startswith("custom-call:") and _CONV_TARGET.search(o) for o in opcodes):
        return "conv/dot"
    if "floor" in opcodes:
        return "quantizer"
    if opcodes & {"reduce-window", "select-and-scatter"}:
        return "pool"
    if "reduce" in opcodes:
        return "reduction"
    if opcodes <= _LAYOUT | {"fusion"}:
        return "layout"
    return "elementwise"


# Timeline lines that summarise other lines (TensorBoard's converter adds them; not expected
# in a raw trace): skipped, so that each kernel is counted once.
_DERIVED_LINES = {"XLA Ops", "Async XLA Ops", "XLA Modules", "Steps", "Framework Ops",
                  "Framework Name Scope", "Source code", "XLA TraceMe"}


def op_times(planes: Iterable, *, gpu: bool, module: str, steps: int = 1) -> dict[str, float]:
    """Seconds per step of each HLO instruction of the module(s) whose name contains
    ``module``, from a trace's planes (``ProfileData.planes``).

    ``gpu``: count the kernels on the device planes' ``Stream`` lines; else the host plane's
    thread events.
    """
    times: collections.Counter = collections.Counter()
    for plane in planes:
        if not plane.name.startswith("/device:" if gpu else "/host:CPU"):
            continue
        for line in plane.lines:
            if line.name in _DERIVED_LINES or (gpu and not line.name.startswith("Stream")):
                continue
            for ev in line.events:
                op, mod = _hlo_op(dict(ev.stats))
                if op and module in (mod or module):
                    times[op] += ev.duration_ns * 1e-9 / steps
    return dict(times)


def _hlo_op(stats: dict) -> tuple[str | None, str | None]:
    """(instruction, module) of an event: its hlo_op/hlo_module stats, or failing those, the
    ``hlo_op=...,hlo_module=...`` of an annotation string (older profilers)."""
    if "hlo_op" in stats:
        return str(stats["hlo_op"]), str(stats.get("hlo_module", "")) or None
    for v in stats.values():
        m = re.search(r"hlo_op=([^,#\s]+)", str(v))
        if m:
            mod = re.search(r"hlo_module=([^,#\s]+)", str(v))
            return m.group(1), mod.group(1) if mod else None
    return None, None


def trace_ops(run: Callable[[int], None], steps: int, module: str) -> dict[str, float]:
    """Runs ``run(steps)`` under jax.profiler; seconds per step of each HLO instruction of
    the module(s) named like ``module`` (e.g. "train_step" for ``jit_train_step``)."""
    d = tempfile.mkdtemp(prefix="faq_profile_")
    with jax.profiler.trace(d):
        run(steps)
    gpu = jax.default_backend() == "gpu"
    times: collections.Counter = collections.Counter()
    for path in glob.glob(f"{d}/**/*.xplane.pb", recursive=True):
        times.update(op_times(ProfileData.from_file(path).planes, gpu=gpu, module=module,
                              steps=steps))
    if not times:
        print(f"no per-operation events of module {module!r} in the trace under {d}")
    return dict(times)
