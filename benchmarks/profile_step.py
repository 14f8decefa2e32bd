"""Where a training step's time goes: per-kernel profile of the faq_jax step (and the peer).

Builds the same steps as ``train_step.py`` (one full training step, donated state, in-memory
batch), traces ``--steps`` of them with ``jax.profiler`` and sums the time of every XLA
operation (CPU: the thunks' events; GPU: the kernels of each HLO instruction), read back with
``jax.profiler.ProfileData``. Each operation is put in a category from the optimized HLO:

- ``conv/dot``: convolutions and matmuls (also cuDNN/cuBLAS/oneDNN calls, fused or not);
- ``quantizer``: fusions holding a ``floor`` (Q_{b,l}'s rounding; FAQ's only floor), with
  whatever elementwise work XLA fused around them (BN, ReLU, the STE mask);
- ``reduction``: fusions holding a ``reduce`` (BN statistics and their gradients, bias and
  weight-quantizer reductions, the loss);
- ``pool``: max-pool forward (``reduce-window``) and backward (``select-and-scatter``);
- ``layout``: copies, transposes, reverses, pads, slices (data movement, no arithmetic);
- ``elementwise``: the other fusions.

Then a table per variant (ms per step per category, share of the step) and the difference of
each variant from the first (what quantization adds, category by category), and the slowest
operations. With ``--peer``, torch.profiler's view of the PyTorch peer (self time per kernel
or op, the same categories guessed from kernel names).

CPU (as the train-step table)::

    python benchmarks/profile_step.py --archs resnet50 --batch 8 --policies fp32,w4a4

GPU::

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/profile_step.py --archs resnet18 \\
        --batch 256 --policies fp32,w4a4 --compute_dtype float32,bfloat16_outputs --peer compile

On a CPU the operations of one step run on several threads at once, so their summed time
exceeds the wall time of a step (both are printed). The GPU path (kernel events of the
device plane) is written for jax.profiler's GPU traces but has not been run on a GPU yet.
"""

from __future__ import annotations

import collections
import glob
import re
import tempfile
import time

import jax
import train_step as ts  # this directory (the step builders and the torch peer)
from jax.profiler import ProfileData
from train_step import torch

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


# Timeline lines that summarise other lines (written by some profiler versions): skipped, so
# that each kernel is counted once.
_DERIVED_LINES = {"XLA Ops", "Async XLA Ops", "XLA Modules", "Steps", "Framework Ops",
                  "Framework Name Scope", "Source code", "XLA TraceMe"}


def trace_ops(run, steps: int) -> dict[str, float]:
    """Runs ``run(steps)`` under jax.profiler; seconds per step of each HLO instruction.

    CPU: the host plane's thread events; GPU: the device plane's kernel events (the host's
    launch events carry the same instruction names and are left out).
    """
    d = tempfile.mkdtemp(prefix="faq_profile_")
    with jax.profiler.trace(d):
        run(steps)
    on_cpu = jax.default_backend() == "cpu"
    device_plane = "/host:CPU" if on_cpu else "/device:"
    streams: collections.Counter = collections.Counter()  # GPU kernels on "Stream #n" lines
    others: collections.Counter = collections.Counter()
    for path in glob.glob(f"{d}/**/*.xplane.pb", recursive=True):
        for plane in ProfileData.from_file(path).planes:
            if not plane.name.startswith(device_plane):
                continue
            for line in plane.lines:
                if line.name in _DERIVED_LINES:
                    continue
                into = streams if line.name.startswith("Stream") and not on_cpu else others
                for ev in line.events:
                    op, module = _hlo_op(dict(ev.stats))
                    if op and "train_step" in (module or "train_step"):
                        into[op] += ev.duration_ns * 1e-9 / steps
    total = streams or others  # (the GPU path has not been run on a GPU yet)
    if not total:
        print(f"no per-operation events in the trace under {d}: nothing to attribute")
    return dict(total)


def _hlo_op(stats: dict) -> tuple[str | None, str | None]:
    """(instruction, module) of an event: its hlo_op/hlo_module stats, or failing those, the
    ``hlo_op=...,hlo_module=...`` of a kernel annotation string."""
    if "hlo_op" in stats:
        return str(stats["hlo_op"]), str(stats.get("hlo_module", "")) or None
    for v in stats.values():
        m = re.search(r"hlo_op=([^,#\s]+)", str(v))
        if m:
            mod = re.search(r"hlo_module=([^,#\s]+)", str(v))
            return m.group(1), mod.group(1) if mod else None
    return None, None


def _wall(run, steps: int) -> float:
    t0 = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t0) / steps


def profile_jax(variants: list[ts.Variant], steps: int, top: int) -> None:
    rows = {}
    for v in variants:
        wall = min(_wall(v.run, steps) for _ in range(2))
        times = trace_ops(v.run, steps)
        cats = hlo_categories(v.hlo)
        by_cat = collections.Counter()
        for op, t in times.items():
            by_cat[cats.get(op, "elementwise")] += t
        unknown = [op for op in times if op not in cats]
        if unknown:
            print(f"note: {len(unknown)} traced operations not in the HLO (counted as "
                  f"elementwise), e.g. {unknown[:3]}")
        rows[v.name] = (wall, by_cat)
        print(f"\n### {v.name}: wall {wall * 1e3:.1f} ms/step, operations "
              f"{sum(times.values()) * 1e3:.1f} ms/step ({len(times)} distinct)")
        print(f"{'category':12s} {'ms/step':>9s} {'share':>6s}")
        s = sum(by_cat.values()) or 1.0
        for c in CATEGORIES:
            print(f"{c:12s} {by_cat[c] * 1e3:9.2f} {by_cat[c] / s:6.1%}")
        print(f"slowest {top} operations (ms/step, category, HLO name):")
        for op, t in sorted(times.items(), key=lambda kv: -kv[1])[:top]:
            print(f"  {t * 1e3:8.2f}  {cats.get(op, '?'):11s} {op}")
    if len(rows) > 1:
        ref = next(iter(rows))
        print(f"\n### ms/step added over `{ref}` (wall, then per category of operation time)")
        print(f"{'variant':28s} {'wall':>8s} " + " ".join(f"{c:>11s}" for c in CATEGORIES))
        w0, c0 = rows[ref]
        for name, (w, c) in list(rows.items())[1:]:
            print(f"{name:28s} {(w - w0) * 1e3:+8.2f} " +
                  " ".join(f"{(c[k] - c0[k]) * 1e3:+11.2f}" for k in CATEGORIES))


# Checked in order; kernel names hold template arguments (``std::array<...>``), hence the
# word boundaries.
_TORCH_CATS = (
    ("reduction", re.compile(r"batch_norm|\bbn_|_bn_", re.I)),  # before cudnn's BN kernels
    ("conv/dot", re.compile(r"conv|gemm|cudnn|cutlass|xmma|\bmm\b|addmm|matmul|mkldnn|"
                            r"winograd|implicit_|linear|sm\d\d_", re.I)),
    ("quantizer", re.compile(r"floor", re.I)),
    ("pool", re.compile(r"pool", re.I)),
    ("reduction", re.compile(r"reduce|\bsum\b|\bmean\b|\bstd\b(?!::)|\bamax\b|\bvar\b", re.I)),
    ("layout", re.compile(r"copy|transpose|contiguous|clone|\bcat\b|fill", re.I)))


def _torch_category(name: str) -> str:
    """A kernel's (or eager op's) category, guessed from its name."""
    if name.startswith("triton_"):  # Inductor: triton_{poi,red,per}_fused_<ops>_<n>
        if "floor" in name:
            return "quantizer"
        return "reduction" if name.startswith(("triton_red_", "triton_per_")) else "elementwise"
    for cat, rx in _TORCH_CATS:
        if rx.search(name):
            return cat
    return "elementwise"


def profile_torch(v: ts.Variant, steps: int, top: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    wall = min(_wall(v.run, steps) for _ in range(2))
    with profile(activities=acts) as prof:
        v.run(steps)
    times = collections.Counter()
    for e in prof.key_averages():
        if cuda:
            t = getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)
            if e.device_type.name != "CUDA":
                continue
        else:
            t = e.self_cpu_time_total
            if e.key.startswith(("ProfilerStep", "Optimizer", "autograd::engine")):
                continue
        times[e.key] += t * 1e-6 / steps
    by_cat = collections.Counter()
    for k, t in times.items():
        by_cat[_torch_category(k)] += t
    s = sum(by_cat.values()) or 1.0
    print(f"\n### {v.name}: wall {wall * 1e3:.1f} ms/step, {'kernels' if cuda else 'ops'} "
          f"{s * 1e3:.1f} ms/step (self time; categories guessed from names)")
    for c in CATEGORIES:
        print(f"{c:12s} {by_cat[c] * 1e3:9.2f} {by_cat[c] / s:6.1%}")
    print(f"slowest {top}:")
    for k, t in times.most_common(top):
        print(f"  {t * 1e3:8.2f}  {_torch_category(k):11s} {k[:100]}")


def main() -> None:
    p = ts.step_arg_parser(__doc__.split("\n")[0], archs="resnet50", steps_gpu=5,
                           policies="fp32,w4a4", compute_dtype="float32", peer="")
    p.add_argument("--top", type=int, default=12, help="slowest operations listed per variant")
    args = ts.parse_step_args(p)
    print(f"jax {jax.__version__} {jax.devices()}; torch {torch.__version__ if torch else '-'}")
    for arch in args.archs.split(","):
        print(f"\n## {arch}, batch {args.batch}, {args.size}x{args.size}, {args.steps} steps, "
              f"device {jax.devices()[0].device_kind}")
        variants = [ts.jax_variant(arch, pol, dt, args.batch, args.size)
                    for dt in args.compute_dtype.split(",") for pol in args.policies.split(",")]
        profile_jax(variants, args.steps, args.top)
        for mode in filter(None, args.peer.split(",")):
            if torch is None:
                print("torch not installed: no peer profile")
                break
            for dt in ts.peer_dtypes(args.compute_dtype.split(",")):
                for pol in args.policies.split(","):
                    profile_torch(ts.torch_variant(arch, pol, mode, dt, args.batch, args.size),
                                  args.steps, args.top)


if __name__ == "__main__":
    main()
