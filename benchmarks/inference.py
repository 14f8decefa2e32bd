"""Integer inference: onnxruntime speed of exported networks, and CIFAR-10 agreement.

Speed (random weights, random BN statistics, l's calibrated on random data, 224x224):

  python benchmarks/inference.py speed --archs resnet18,resnet50 --bits 8

prints batch-1 latency and batch-32 throughput of the integer ONNX model (ConvInteger etc.)
against the fp32 ONNX export of the same network, and their ratios.

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


def speed(archs: list[str], bits: int, size: int, threads: int, repeats: int) -> None:
    """Latency (batch 1) and throughput (batch 32), integer vs fp32 ONNX."""
    rng = np.random.default_rng(0)
    pol = policy_lib.paper_policy(bits, bits)
    print("| network | model | batch-1 latency ms (median) | batch-32 images/s |")
    print("|---|---|---|---|")
    for arch in archs:
        model = models.create(arch, policy=pol)
        variables = export.random_variables(model, (size, size, 3), batch=2, calib_batches=1)
        net = export.export(model, variables, input_shape=(size, size, 3))
        res = {}
        for kind in ("int", "fp32"):
            sess = _session(onnx_writer.to_onnx(net, float_mode=kind == "fp32"), threads)
            name = sess.get_inputs()[0].name
            for batch in (1, 32):
                codes = rng.integers(-127, 128, (batch, 3, size, size)).astype(np.int8)
                x = codes if kind == "int" else np.ldexp(codes.astype(np.float32), -5)
                times = _time(sess, {name: x}, repeats if batch == 1 else max(2, repeats // 5))
                res[kind, batch] = statistics.median(times)
        for kind in ("int", "fp32"):
            print(f"| {arch} W{bits}A{bits} | {kind} | {1e3 * res[kind, 1]:.1f} | "
                  f"{32 / res[kind, 32]:.1f} |")
        print(f"| {arch} | int/fp32 ratio | {res['int', 1] / res['fp32', 1]:.2f}x time | "
              f"{res['fp32', 32] / res['int', 32]:.2f}x throughput |")
        sys.stdout.flush()


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
    s.add_argument("--archs", default="resnet18,resnet50")
    s.add_argument("--bits", type=int, default=8)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--repeats", type=int, default=20)
    a = sub.add_parser("agreement")
    a.add_argument("--ckpt", required=True)
    a.add_argument("--bits", type=int, default=8)
    a.add_argument("--max_images", type=int, default=5000)
    args = ap.parse_args()
    if args.cmd == "speed":
        speed(args.archs.split(","), args.bits, args.size, args.threads, args.repeats)
    else:
        agreement(args.ckpt, args.bits, args.max_images)


if __name__ == "__main__":
    main()
