"""Where a training step's time goes: per-kernel profile of the faq_jax step (and the peer).

Builds the same steps as ``bench_train_step.py`` (one full training step, donated state, in-memory
batch), traces ``--steps`` of them with ``jax.profiler`` and sums the time of every XLA
operation (CPU: the thunks' events; GPU: the kernels of each HLO instruction); the trace
reading and the categories are ``xla_profile.py``'s:

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
or op, the same categories guessed from kernel names). With ``--reps N`` it first times the
same compiled variants as ``bench_train_step.py`` does (its table and ratios), so one command gives
both and compiles each variant once.

CPU (as the train-step table)::

    python benchmarks/profile_step.py --archs resnet50 --batch 8 --policies fp32,w4a4

GPU (table and profile in one run)::

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/profile_step.py --archs resnet18 \\
        --batch 256 --steps 10 --reps 3 --policies fp32,w4a4 \\
        --compute_dtype float32,bfloat16_outputs --peer compile

On a CPU the operations of one step run on several threads at once, so their summed time
exceeds the wall time of a step (both are printed). The GPU path follows the trace format of
XLA's CUPTI collector (see ``xla_profile.py``; ``tests/xla_profile_test.py`` reads a trace
written in it) but has not been run on a GPU yet.
"""

from __future__ import annotations

import collections
import re
import time

import bench_train_step as ts  # this directory (the step builders and the torch peer)
import jax
from bench_train_step import torch
from xla_profile import CATEGORIES, hlo_categories, trace_ops


def _wall(run, steps: int) -> float:
    t0 = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t0) / steps


def profile_jax(variants: list[ts.Variant], steps: int, top: int) -> None:
    rows = {}
    for v in variants:
        wall = min(_wall(v.run, steps) for _ in range(2))
        times = trace_ops(v.run, steps, module="train_step")
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
                           policies="fp32,w4a4", compute_dtype="float32", peer="", reps=0,
                           reps_help="also time the variants as bench_train_step.py does (its "
                                     "table and ratios) before profiling; 0: profile only")
    p.add_argument("--top", type=int, default=12, help="slowest operations listed per variant")
    args = ts.parse_step_args(p)
    print(f"jax {jax.__version__} {jax.devices()}; torch {torch.__version__ if torch else '-'}")
    for arch in args.archs.split(","):
        variants = ts.build_variants(arch, args)  # compiled once, for the table and profile
        if args.reps:
            ts.time_variants(arch, variants, args)
        print(f"\n## profile: {arch}, batch {args.batch}, {args.size}x{args.size}, "
              f"{args.steps} steps, device {jax.devices()[0].device_kind}")
        profile_jax([v for v in variants if v.hlo is not None], args.steps, args.top)
        for v in variants:
            if v.hlo is None:  # a torch peer
                profile_torch(v, args.steps, args.top)


if __name__ == "__main__":
    main()
