"""Integer inference: onnxruntime speed of exported networks, and CIFAR-10 agreement.

Speed (random weights, random BN statistics, l's calibrated on random data; ResNet-18/50 at
224x224, the CIFAR ResNets at 32x32):

  python benchmarks/inference.py speed            # on an idle machine
  python benchmarks/inference.py speed --quick    # a quick check that it runs

prints the machine (date, load average, lscpu model and SIMD flags) and the batch-1 latency
and batch-32 throughput of six ONNX models of each network: the fp32 graph, the bit-exact
integer model (``export.onnx_writer``) with its convolutions chosen as by default, all as
exact float32 Convs and all as ConvInteger, and the int8 deployment model (``onnx_deploy``:
QDQ, fused by onnxruntime into QLinearConv / QLinearAdd) in its portable default (weights
beyond +-64 as uint8: u8 x u8 kernels) and with ``portable=False`` (int8 weights only:
u8 x s8, exact only on CPUs with VNNI).

Agreement on the CIFAR-10 validation split (last 500 images per class):

  python benchmarks/inference.py agreement --ckpt RUN/fp32 --bits 8

restores params + batch_stats from an orbax checkpoint (a CheckpointManager directory such as a
fine-tuned run's ``checkpoints``, or one saved pytree such as ``fp32_weights/variables``),
calibrates (5 training batches) unless the checkpoint holds calibrated l's, exports, and
compares top-1 of the integer executor and the ONNX model with the float32 simulation (and
the executor's logits with the float64 simulation's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from faq_jax import export, models
from faq_jax import policy as policy_lib
from faq_jax.export import onnx_writer


def _session(proto, threads: int):
    import onnxruntime as ort  # noqa: PLC0415

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])


def _time(sess, feed, repeats: int) -> list[float]:
    sess.run(None, feed)  # warm-up
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        sess.run(None, feed)
        out.append(time.perf_counter() - t)
    return out


def machine_info() -> list[str]:
    """Date, load average, CPU model and SIMD flags, onnxruntime version (for the table)."""
    import platform  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    import onnxruntime as ort  # noqa: PLC0415

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    fields = dict(line.split(":", 1) for line in lscpu.splitlines() if ":" in line)
    flags = fields.get("Flags", "").split()
    simd = [f for f in flags if f.startswith(("avx512_vnni", "avx_vnni", "avx512f", "avx512bw",
                                              "avx2", "amx"))]
    return [f"date: {time.strftime('%Y-%m-%d %H:%M %Z')}",
            f"CPU: {fields.get('Model name', platform.processor()).strip()}, "
            f"{os.cpu_count()} logical CPUs; lscpu flags: {' '.join(simd)}",
            f"load average (1, 5, 15 min) before: {' '.join(f'{v:.2f}' for v in os.getloadavg())}",
            f"onnxruntime {ort.__version__}, CPUExecutionProvider, ORT_ENABLE_ALL"]


SPEED_ARCHS = {"resnet18": 224, "resnet50": 224, "resnet20": 32, "cifar_resnet20": 32}


def speed(archs: list[str], bits: int, threads: int, repeats: int, batch_repeats: int,
          size: int | None = None) -> None:
    """Batch-1 latency and batch-32 throughput of six ONNX models of each network: the fp32
    graph, the bit-exact integer model (``export.onnx_writer``; float32 or ConvInteger
    convolutions) and the int8 deployment model (``onnx_deploy``, QDQ fused into QLinearConv
    etc.; portable, and int8 weights only)."""
    from faq_jax.export import onnx_deploy  # noqa: PLC0415

    rng = np.random.default_rng(0)
    pol = policy_lib.paper_policy(bits, bits)
    for line in machine_info():
        print(f"- {line}")
    print(f"- {threads} intra-op threads; median of {repeats} batch-1 runs and of "
          f"{batch_repeats} batch-32 runs after one warm-up; random weights, random BN "
          "statistics, l's calibrated on one N(0, 1) batch")
    print()
    print("| network | model | batch-1 latency ms (median) | batch-32 images/s | "
          "throughput / fp32 |")
    print("|---|---|---|---|---|")
    kinds = {"fp32": "fp32 ONNX", "int": "bit-exact (default: float32 convs where exact)",
             "int_f": "bit-exact, all float32 convs (split)",
             "int_ci": "bit-exact, all ConvInteger", "deploy": "int8 deployment (portable)",
             "deploy_s8": "int8 deployment, int8 weights only (VNNI)"}
    for arch in archs:
        hw = size or SPEED_ARCHS.get(arch, 224)
        classes = 10 if hw <= 64 else 1000
        model = models.create(arch, policy=pol, num_classes=classes)
        variables = export.random_variables(model, (hw, hw, 3), batch=2, calib_batches=1)
        net = export.export(model, variables, input_shape=(hw, hw, 3))
        protos = {"fp32": onnx_writer.to_onnx(net, float_mode=True),
                  "int": onnx_writer.to_onnx(net),
                  "int_f": onnx_writer.to_onnx(net, conv_impl="float"),
                  "int_ci": onnx_writer.to_onnx(net, conv_impl="integer"),
                  "deploy": onnx_deploy.to_onnx(net),
                  "deploy_s8": onnx_deploy.to_onnx(net, portable=False)}
        res = {}
        for kind, proto in protos.items():
            sess = (onnx_deploy.session(proto, threads=threads) if kind.startswith("deploy")
                    else _session(proto, threads))
            name = sess.get_inputs()[0].name
            for batch in (1, 32):
                codes = rng.integers(-127, 128, (batch, 3, hw, hw)).astype(np.int8)
                x = np.ldexp(codes.astype(np.float32), -5) if kind == "fp32" else codes
                times = _time(sess, {name: x}, repeats if batch == 1 else batch_repeats)
                res[kind, batch] = statistics.median(times)
            del sess
        for kind in protos:
            print(f"| {arch} W{bits}A{bits} {hw}x{hw} | {kinds[kind]} | "
                  f"{1e3 * res[kind, 1]:.1f} | {32 / res[kind, 32]:.1f} | "
                  f"{res['fp32', 32] / res[kind, 32]:.2f}x |")
        sys.stdout.flush()
    print(f"\n- load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def _cifar_config():
    from faq_jax.config import defaults  # noqa: PLC0415

    return defaults.cifar10_base(8, 8, defaults.shared_cifar10_archive(__file__))


def agreement(ckpt: str, bits: int, max_images: int) -> None:
    """Top-1 agreement of executor / ONNX with the simulated network on CIFAR-10 val."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    from faq_jax import calibrate, data  # noqa: PLC0415

    path = os.path.abspath(ckpt)
    if os.path.exists(os.path.join(path, "_CHECKPOINT_METADATA")):  # one saved pytree
        step, state = "-", ocp.StandardCheckpointer().restore(path)
    else:  # a CheckpointManager directory: its latest step
        mgr = ocp.CheckpointManager(path)
        step = mgr.latest_step()
        state = mgr.restore(step, args=ocp.args.StandardRestore())
    config = _cifar_config()
    model = models.create("resnet20", policy=policy_lib.paper_policy(bits, bits),
                          num_classes=10)
    variables = {k: state[k] for k in ("params", "batch_stats")}
    if state.get("quant"):
        variables["quant"] = state["quant"]
        how = "checkpoint's calibrated l's"
    else:
        shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                                jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
        variables["quant"] = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype),
                                          shapes["quant"])
        batches = data.calibration_batches(config, local_batch_size=128,
                                                     num_batches=5)
        variables["quant"] = calibrate.calibrate(model, variables,
                                                 (b["image"] for b in batches))
        how = "calibrated here on 5 training batches"
    net = export.export(model, variables, input_shape=(32, 32, 3))
    sess = _session(onnx_writer.to_onnx(net), threads=2)
    sim32 = jax.jit(lambda v, x: model.apply(v, x, train=False))
    n = agree_exec = agree_onnx = exact64 = onnx_exec = correct = 0
    t0 = time.time()
    for batch in data.eval_batches(config, local_batch_size=500):
        keep = batch["mask"]
        codes = export.input_codes(net, batch["image"])[keep]
        ref32 = np.asarray(sim32(variables, jnp.asarray(batch["image"][keep], jnp.float32)))
        q, lsb = export.run(net, codes)
        with jax.enable_x64(True):
            x64 = jnp.ldexp(jnp.asarray(codes, jnp.float64), net.nodes[0]["l"])
            ref64 = np.asarray(sim32(variables, x64))
        qo = sess.run(None, {"x_codes": codes.transpose(0, 3, 1, 2)})[0]
        n += len(codes)
        agree_exec += int(np.sum(q.argmax(1) == ref32.argmax(1)))
        agree_onnx += int(np.sum(qo.argmax(1) == ref32.argmax(1)))
        onnx_exec += int(np.sum(np.all(qo == q, axis=1)))
        exact64 += int(np.sum(np.all(np.ldexp(q.astype(np.float64), lsb) == ref64, axis=1)))
        correct += int(np.sum(q.argmax(1) == batch["label"][keep]))
        print(f"{n} images, {time.time() - t0:.0f}s", file=sys.stderr)
        if n >= max_images:
            break
    print(f"checkpoint {ckpt} step {step}, W{bits}A{bits}, {how}; {n} CIFAR-10 val images")
    print(f"executor top-1 == float32 simulation: {agree_exec}/{n} ({100 * agree_exec / n:.2f}%)")
    print(f"ONNX (onnxruntime) top-1 == float32 simulation: {agree_onnx}/{n} "
          f"({100 * agree_onnx / n:.2f}%)")
    print(f"executor logits == float64 simulation bit for bit: {exact64}/{n}")
    print(f"ONNX logits == executor logits bit for bit: {onnx_exec}/{n}")
    print(f"executor top-1 accuracy: {100 * correct / n:.2f}%")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--archs", default=",".join(SPEED_ARCHS))
    s.add_argument("--bits", type=int, default=8)
    s.add_argument("--size", type=int, default=None,
                   help="input H = W for every arch (default: 224 ImageNet, 32 CIFAR)")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=20, help="batch-1 runs")
    s.add_argument("--batch_repeats", type=int, default=5, help="batch-32 runs")
    s.add_argument("--quick", action="store_true",
                   help="3 batch-1 runs and 1 batch-32 run (a check that it works)")
    a = sub.add_parser("agreement")
    a.add_argument("--ckpt", required=True)
    a.add_argument("--bits", type=int, default=8)
    a.add_argument("--max_images", type=int, default=5000)
    args = ap.parse_args()
    if args.cmd == "speed":
        repeats, batch_repeats = (3, 1) if args.quick else (args.repeats, args.batch_repeats)
        speed(args.archs.split(","), args.bits, args.threads, repeats, batch_repeats, args.size)
    else:
        agreement(args.ckpt, args.bits, args.max_images)


if __name__ == "__main__":
    main()
