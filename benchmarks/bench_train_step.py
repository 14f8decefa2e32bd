"""Training-step throughput: float vs FAQ W8A8 / W4A4, fp32 vs bf16 operands, vs a torch peer.

One full step each (forward, backward, SGD+momentum with coupled weight decay, BatchNorm
statistics), jitted with the state donated, on an in-memory batch; compile and warm-up are
excluded. All variants run in one process and are timed interleaved (rep 1 of every variant,
then rep 2 ...), so a machine shared with other jobs slows them alike; the table gives the
median over ``--reps`` of the mean step time over ``--steps`` steps, and ratios of medians.

The peer is torchvision's ResNet with straight-through fake quantization written in PyTorch:
per-tensor weight l from the same rule (k*std at 4 bits, max|w| at 8; first conv and fc at
8 bits in W4A4), ReLU outputs unsigned with a fixed l, input and fc input re-quantized
(8-bit). Its BatchNorm is torch's float BN (not folded and quantized as in faq_jax).

CPU (this repo's 2-core box)::

    python benchmarks/bench_train_step.py --archs resnet18 --batch 8 --steps 2 --reps 5 --peer eager

GPU (H100; one arch per command keeps each under 10 minutes, most of it compiling)::

    XLA_PYTHON_CLIENT_PREALLOCATE=false python benchmarks/bench_train_step.py --archs resnet18 \
        --batch 256 --steps 10 --reps 3 --compute_dtype float32,bfloat16,bfloat16_outputs \
        --peer compile

``compute_dtype`` values are config.compute_dtype's (docs/speed.md); the peer runs float32
and ``torch.autocast(bfloat16)`` ("autocast"), compared with the bf16 modes.

Needs only the core (jax, flax, optax; torch/torchvision for the peer): no TensorFlow,
tfds, ml_collections or clu.
"""

from __future__ import annotations

# torch first: nothing below imports TensorFlow, but keep the order safe anyway.
try:
    import torch
    import torchvision
except ImportError:  # the JAX side runs without torch
    torch = torchvision = None

import argparse
import dataclasses
import datetime
import platform
import resource
import statistics
import time
import types
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from faq_jax import layers, models, optim, quant, steps
from faq_jax import policy as policy_lib

POLICIES = {"fp32": None, "w8a8": policy_lib.W8A8, "w4a4": policy_lib.W4A4,
            # W4A4 with BatchNorm's folded constants left in float: what quantizing them costs
            "w4a4_bnfloat": dataclasses.replace(policy_lib.W4A4, quantize_bn=False)}
# peer: (weight bits, activation bits); its BatchNorm is always float
BITS = {"w8a8": (8, 8), "w4a4": (4, 4), "w4a4_bnfloat": (4, 4)}
DTYPES = layers.COMPUTE_DTYPES  # config.compute_dtype values


@dataclasses.dataclass
class Variant:
    """A benchmarked step: ``run(n)`` does n steps and blocks until they are done."""

    name: str
    run: Callable[[int], None]
    compile_s: float
    mem_mb: float | None  # per-variant memory (see --help of the table); None if unknown
    times: list[float] = dataclasses.field(default_factory=list)  # seconds per step
    hlo: str | None = None  # the optimized HLO (faq_jax variants), for profile_step.py


def _optimizer(batch: int):
    """The project's optimizer (SGD 0.9, coupled wd 1e-4, constant lr), no ml_collections."""
    cfg = types.SimpleNamespace(schedule="constant", lr=1e-4, weight_decay=1e-4, momentum=0.9,
                                nesterov=False)
    sched = optim.BatchSchedule(num_train=batch * 1000, num_epochs=1, micro=batch,
                                sizes=((0, batch),))
    return optim.make_optimizer(cfg, sched)


def jax_variant(arch: str, pol: str, dtype: str, batch: int, size: int) -> Variant:
    """Builds, compiles and warms up the faq_jax train step of one configuration."""
    model = models.create(arch, policy=POLICIES[pol], num_classes=1000, dtype=DTYPES[dtype])
    tx = _optimizer(batch)
    key = jax.random.key(0)
    variables = jax.jit(lambda x: model.init(key, x))(jnp.zeros((1, size, size, 3)))
    state = steps.create_state(variables, tx, jax.random.key(1))
    rng = np.random.default_rng(0)
    batch_ = {"image": jnp.asarray(rng.standard_normal((1, batch, size, size, 3), np.float32)),
              "label": jnp.asarray(rng.integers(0, 1000, (1, batch)), jnp.int32)}
    step = jax.jit(steps.make_train_step(model, tx), donate_argnums=0)
    t0 = time.perf_counter()
    compiled = step.lower(state, batch_).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    mem_mb = None
    if mem is not None:  # arguments + outputs + XLA temporaries, minus donated aliases
        mem_mb = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                  + mem.temp_size_in_bytes - mem.alias_size_in_bytes) / 2**20
    box = [state]

    def run(n: int) -> None:
        for _ in range(n):
            box[0], metrics = compiled(box[0], batch_)
        jax.block_until_ready((box[0].params, metrics))

    run(1)  # warm-up
    return Variant(f"jax {pol} {dtype}", run, compile_s, mem_mb, hlo=compiled.as_text())


# --------------------------------------------------------------------------- torch peer


def _torch_fake_quant(x, lsb: float, bits: int, signed: bool):
    """Q_{b,l}(x) with the straight-through gradient (identity in range, zero if clipped)."""
    hi = 2 ** (bits - 1) - 1 if signed else 2**bits - 1
    lo = -hi if signed else 0
    step = 2.0**lsb if isinstance(lsb, (int, float)) else torch.exp2(lsb)
    # codes = floor(x / step + 1/2) lies in [lo, hi] iff x / step in [lo - 1/2, hi + 1/2).
    xc = torch.clamp(x, (lo - 0.5) * step, (hi + 0.5) * step)
    q = torch.clamp(torch.floor(xc / step + 0.5), lo, hi) * step
    return xc + (q - xc).detach()


def _weight_lsb(w, bits: int):
    """FAQ's per-tensor weight l, on device (no host sync): ceil(log2(spread / (2^(b-1)-1)))."""
    w = w.detach()
    spread = w.abs().amax() if bits >= 8 else 4.12 * w.std(unbiased=False)
    return torch.ceil(torch.log2(torch.clamp(spread / (2 ** (bits - 1) - 1), min=2.0**-126)))


def _torch_quant_model(arch: str, w_bits: int, a_bits: int):
    """torchvision ``arch`` with fake-quantized weights (per tensor) and ReLU outputs."""
    nn = torch.nn
    net = getattr(torchvision.models, arch)(num_classes=1000)

    class QConv(nn.Conv2d):
        bits = w_bits

        def forward(self, x):
            w = _torch_fake_quant(self.weight, _weight_lsb(self.weight, self.bits), self.bits,
                                  True)
            return self._conv_forward(x, w, self.bias)

    class QLinear(nn.Linear):
        def forward(self, x):
            x = _torch_fake_quant(x, -4, 8, False)  # the pooled ReLU output: 8-bit
            w = _torch_fake_quant(self.weight, _weight_lsb(self.weight, 8), 8, True)
            return nn.functional.linear(x, w, self.bias)

    class QReLU(nn.Module):
        def __init__(self, bits: int):
            super().__init__()
            self.bits = bits

        def forward(self, x):
            lsb = quant.uncalibrated_activation_lsb(self.bits)  # fixed, like a frozen l
            return _torch_fake_quant(torch.relu(x), lsb, self.bits, False)

    def swap(module: nn.Module, prefix: str = "") -> None:
        for name, child in module.named_children():
            path = f"{prefix}{name}"
            if isinstance(child, nn.Conv2d):
                q = QConv(child.in_channels, child.out_channels, child.kernel_size,
                          child.stride, child.padding, bias=child.bias is not None)
                q.bits = 8 if path == "conv1" else w_bits  # first conv: 8-bit (FAQ)
                q.load_state_dict(child.state_dict())
                setattr(module, name, q)
            elif isinstance(child, nn.Linear):
                q = QLinear(child.in_features, child.out_features)
                q.load_state_dict(child.state_dict())
                setattr(module, name, q)
            elif isinstance(child, nn.ReLU):
                setattr(module, name, QReLU(a_bits))
            else:
                swap(child, path + ".")

    swap(net)
    last = net.layer4[-1]
    # The last ReLU feeds the classifier: 8-bit (FAQ). torchvision shares one ReLU module
    # per block, so the whole last block's ReLUs run at 8 bits (a negligible difference).
    last.relu.bits = 8

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, x):
            return self.net(_torch_fake_quant(x, -5, 8, True))  # normalised input, 8-bit

    return Net()


def torch_variant(arch: str, pol: str, mode: str, dtype: str, batch: int,
                  size: int) -> Variant:
    """The PyTorch peer step (eager or torch.compile), same batch, same device."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if pol == "fp32":
        net = getattr(torchvision.models, arch)(num_classes=1000)
    else:
        net = _torch_quant_model(arch, *BITS[pol])
    net = net.to(dev).to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9, weight_decay=1e-4)
    x = torch.randn(batch, 3, size, size, device=dev).to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device=dev)
    fwd = torch.compile(net) if mode == "compile" else net
    amp = dtype == "autocast"  # bf16 operands and outputs

    def one() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    def run(n: int) -> None:
        for _ in range(n):
            one()
        if dev.type == "cuda":
            torch.cuda.synchronize()

    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    run(2)  # compile (torch.compile traces lazily) + warm-up
    compile_s = time.perf_counter() - t0
    mem_mb = torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None
    return Variant(f"torch {pol} {dtype} {mode}", run, compile_s, mem_mb)


# --------------------------------------------------------------------------- driver


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def build_variants(arch: str, args: argparse.Namespace) -> list[Variant]:
    """Every faq_jax variant of ``args`` (dtype x policy), then the peers, compiled."""
    size = args.size
    pols = args.policies.split(",")
    dtypes = args.compute_dtype.split(",")
    variants: list[Variant] = []
    for dt in dtypes:
        for pol in pols:
            print(f"[{arch}] compiling jax {pol} {dt} ...", flush=True)
            variants.append(jax_variant(arch, pol, dt, args.batch, size))
    for mode in [m for m in args.peer.split(",") if m]:
        if torch is None:
            print("torch not installed: no peer")
            break
        for dt in peer_dtypes(dtypes):
            for pol in pols:
                print(f"[{arch}] building torch {pol} {dt} {mode} ...", flush=True)
                try:
                    variants.append(torch_variant(arch, pol, mode, dt, args.batch, size))
                except Exception as e:  # report, keep benchmarking the rest
                    print(f"  torch {mode} failed: {type(e).__name__}: {str(e)[:300]}")
    return variants


def time_variants(arch: str, variants: list[Variant], args: argparse.Namespace) -> None:
    """Times the variants interleaved (``--reps`` x ``--steps``); prints the table and ratios."""
    size = args.size
    pols = args.policies.split(",")
    dtypes = args.compute_dtype.split(",")
    for rep in range(args.reps):
        for v in variants:
            t0 = time.perf_counter()
            v.run(args.steps)
            v.times.append((time.perf_counter() - t0) / args.steps)
        print(f"  rep {rep + 1}/{args.reps}: " +
              "  ".join(f"{v.name}={v.times[-1]:.3f}s" for v in variants), flush=True)

    med = {v.name: statistics.median(v.times) for v in variants}
    print(f"\n## {arch}, batch {args.batch}, {size}x{size}, {args.steps} steps x "
          f"{args.reps} reps, device {jax.devices()[0].device_kind}")
    print(f"{'variant':32s} {'step s (median)':>15s} {'min':>7s} {'max':>7s} {'img/s':>8s} "
          f"{'compile s':>9s} {'mem MB':>8s}")
    for v in variants:
        m = med[v.name]
        print(f"{v.name:32s} {m:15.4f} {min(v.times):7.4f} {max(v.times):7.4f} "
              f"{args.batch / m:8.1f} {v.compile_s:9.1f} {_fmt(v.mem_mb, '8.0f')}")
    print("ratios of step time (median; > 1 = slower than the reference):")
    for dt in dtypes:
        for pol in [q for q in pols if q != "fp32"]:
            a, b = f"jax {pol} {dt}", f"jax fp32 {dt}"
            if a in med and b in med:
                print(f"  {a} / {b}: {med[a] / med[b]:.3f}")
    for dt in dtypes:
        for pol in pols:
            a, b = f"jax {pol} float32", f"jax {pol} {dt}"
            if dt != "float32" and a in med and b in med:
                print(f"  speed-up {dt} over float32 ({pol}): {med[a] / med[b]:.3f}")
    print("throughput faq_jax / peer (> 1 = faq_jax faster):")
    for v in variants:
        if v.name.startswith("torch "):
            _, pol, dt, mode = v.name.split()
            for jdt in dtypes:
                j = f"jax {pol} {jdt}"
                if j in med and (jdt == "float32") == (dt == "float32"):
                    print(f"  {j} / {v.name}: {med[v.name] / med[j]:.3f}")


def step_arg_parser(description: str, *, archs: str, steps_gpu: int, policies: str,
                    compute_dtype: str, peer: str, reps: int,
                    reps_help: str = "timed repetitions per variant (interleaved)",
                    ) -> argparse.ArgumentParser:
    """The flags this benchmark and profile_step.py share (defaults differ per script)."""
    on_gpu = jax.default_backend() == "gpu"
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--archs", default=archs)
    p.add_argument("--batch", type=int, default=256 if on_gpu else 8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--steps", type=int, default=steps_gpu if on_gpu else 2)
    p.add_argument("--policies", default=policies, help=f"comma list of {','.join(POLICIES)}")
    p.add_argument("--compute_dtype", default=compute_dtype,
                   help="comma list of float32,bfloat16,bfloat16_outputs (config.compute_dtype)")
    p.add_argument("--peer", default=peer,
                   help="comma list of eager,compile (torch peer modes); empty: no peer")
    p.add_argument("--reps", type=int, default=reps, help=reps_help)
    return p


def parse_step_args(p: argparse.ArgumentParser) -> argparse.Namespace:
    """Parses and checks --policies and --compute_dtype against what exists."""
    args = p.parse_args()
    for dt in args.compute_dtype.split(","):
        if dt not in DTYPES:
            p.error(f"--compute_dtype: unknown {dt!r}; choose from {', '.join(DTYPES)}")
    for pol in args.policies.split(","):
        if pol not in POLICIES:
            p.error(f"--policies: unknown {pol!r}; choose from {', '.join(POLICIES)}")
    return args


def peer_dtypes(dtypes: list[str]) -> list[str]:
    """The peer's counterparts of faq_jax compute dtypes: float32, or autocast for bf16 modes."""
    return list(dict.fromkeys("float32" if d == "float32" else "autocast" for d in dtypes))


def main() -> None:
    p = step_arg_parser(__doc__.split("\n")[0], archs="resnet18,resnet50", steps_gpu=10,
                        policies="fp32,w8a8,w4a4", compute_dtype="float32,bfloat16",
                        peer="eager", reps=5)
    args = parse_step_args(p)
    on_gpu = jax.default_backend() == "gpu"
    print(f"date {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M UTC}; "
          f"{platform.processor() or platform.machine()}; jax {jax.__version__} "
          f"{jax.devices()}; torch {torch.__version__ if torch else '-'}")
    for arch in args.archs.split(","):
        time_variants(arch, build_variants(arch, args), args)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"\nprocess max RSS {rss:.0f} MB (all variants)")
    if on_gpu:
        stats = jax.local_devices()[0].memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        if peak:
            print(f"jax peak_bytes_in_use {peak / 2**20:.0f} MB (process, all variants)")


if __name__ == "__main__":
    main()
