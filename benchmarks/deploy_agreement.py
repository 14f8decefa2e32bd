"""How close the int8 deployment model (``export.onnx_deploy``) stays to the bit-exact network.

CIFAR-10 test split (all 10,000 images of ``cifar10-test-jpeg.tar.gz``, decoded with PIL,
[0, 1] RGB normalised with the ImageNet mean / std; labels: class folders sorted):

  python benchmarks/deploy_agreement.py cifar --npz W8A8.npz
  python benchmarks/deploy_agreement.py cifar --bits 4   # W4A4 built here (see --help)

Without ``--npz`` the network is cifar_resnet20 from a converted checkpoint (``--weights``),
quantized with ``paper_policy(bits, bits)`` and calibrated on ``--calib_images`` training
images (not fine-tuned). Reports top-1 agreement of onnxruntime's deployment model with
``export.run``, both accuracies, the fraction of images whose logits differ and the max
relative logit error (max |deploy - executor| / max |executor| per batch), for the default
residual l (``onnx_deploy.default_residual_l``) and for the one chosen on 256 training images,
in the portable default form, and for the default l with ``portable=False`` (int8 weights
everywhere, exact on VNNI CPUs only).

ImageNet ResNets at 224 (random weights, random BN statistics, l's calibrated on N(0, 1)
batches) on CIFAR-10 test images resized to 224 (bilinear); the reference there is the
bit-exact ONNX model, whose logits equal ``export.run``'s bit for bit (checked on the
first image; the NumPy executor takes 15-30 s per image at 224; on CIFAR-10 the reference
is the same model, checked against the executor on the first 64 images):

  python benchmarks/deploy_agreement.py imagenet --archs resnet18,resnet50 --images 1000
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tarfile
import time

import numpy as np

from faq_jax import export, models
from faq_jax import policy as policy_lib
from faq_jax.config import defaults
from faq_jax.export import onnx_deploy

# ../shared/data beside the repository; a converted cifar_resnet20 (python -m weights_convert
# --arch cifar_resnet20 --state-dict resnet20-12fca82f.th --out DIR), as the study makes it.
TEST = defaults.shared_cifar10_test_archive(__file__)
TRAIN = defaults.shared_cifar10_archive(__file__)
CONVERTED = os.path.expanduser("~/.cache/faq_jax/study/resnet20/converted")
MEAN = np.asarray([0.485, 0.456, 0.406], np.float32)
STD = np.asarray([0.229, 0.224, 0.225], np.float32)


def read_jpegs(archive: str, *, limit_per_class: int | None = None, size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(normalised float32 NHWC images, int labels) of a ``<split>/<class>/NNNN.jpg`` tar."""
    from PIL import Image  # noqa: PLC0415

    raw: dict[str, list[tuple[str, bytes]]] = {}
    with tarfile.open(archive) as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) != 3 or not parts[2].endswith(".jpg"):
                continue
            files = raw.setdefault(parts[1], [])
            if limit_per_class is None or len(files) < limit_per_class:
                files.append((parts[2], tar.extractfile(m).read()))
    classes = sorted(raw)
    images, labels = [], []
    for label, cls in enumerate(classes):
        for _, data in sorted(raw[cls]):
            im = Image.open(io.BytesIO(data)).convert("RGB")
            if size is not None and im.size != (size, size):
                im = im.resize((size, size), Image.BILINEAR)
            images.append(np.asarray(im))
            labels.append(label)
    x = (np.stack(images).astype(np.float32) / 255.0 - MEAN) / STD
    return x.astype(np.float32), np.asarray(labels)


def executor_logits(net, codes: np.ndarray) -> np.ndarray:
    q, lsb = export.run(net, codes)
    return np.ldexp(q.astype(np.float64), lsb)


def bit_exact_onnx(net, threads: int = 2):
    """The bit-exact ONNX model (``onnx_export``) as the reference: its logits equal
    ``export.run``'s bit for bit (tests/onnx_export_test.py; spot-checked here), and it
    runs ~1000x faster than the NumPy executor at 224x224."""
    from faq_jax.export import onnx_writer  # noqa: PLC0415

    sess = onnx_deploy.session(onnx_writer.to_onnx(net), threads=threads)
    lsb = int(sess.get_modelmeta().custom_metadata_map["logits_l"])

    def logits(codes):
        q = sess.run(None, {"x_codes": codes.transpose(0, 3, 1, 2)})[0]
        return np.ldexp(q.astype(np.float64), lsb)
    return logits


def compare(net, x, labels, sessions: dict[str, object], batch: int = 500,
            reference=None) -> None:
    """Executor (or ``reference(codes)``) vs each deployment session on images x."""
    reference = reference or (lambda codes: executor_logits(net, codes))
    n = len(x)
    stats = {k: dict(agree=0, correct=0, differ=0, rel=0.0) for k in sessions}
    exec_correct = 0
    t0 = time.time()
    for i in range(0, n, batch):
        codes = export.input_codes(net, x[i:i + batch])
        ref = reference(codes)
        exec_correct += int(np.sum(ref.argmax(1) == labels[i:i + batch]))
        for k, sess in sessions.items():
            y = onnx_deploy.run(sess, codes=codes).astype(np.float64)
            s = stats[k]
            s["agree"] += int(np.sum(y.argmax(1) == ref.argmax(1)))
            s["correct"] += int(np.sum(y.argmax(1) == labels[i:i + batch]))
            s["differ"] += int(np.sum(np.any(y != ref, axis=1)))
            s["rel"] = max(s["rel"], float(np.abs(y - ref).max() / np.abs(ref).max()))
        print(f"{min(i + batch, n)}/{n} images, {time.time() - t0:.0f}s", file=sys.stderr)
    print("| model | top-1 == executor | top-1 accuracy | logits differ | max rel. logit error |")
    print("|---|---|---|---|---|")
    print(f"| executor (bit-exact) | - | {100 * exec_correct / n:.2f}% | - | - |")
    for k, s in stats.items():
        print(f"| {k} | {s['agree']}/{n} ({100 * s['agree'] / n:.2f}%) | "
              f"{100 * s['correct'] / n:.2f}% | {s['differ']}/{n} | {s['rel']:.2e} |")
    sys.stdout.flush()


def _sessions(net, calib_codes):
    chosen = onnx_deploy.choose_residual_l(net, calib_codes)
    default = onnx_deploy.default_residual_l(net)
    print(f"residual l (node: l): default {default}; chosen on {len(calib_codes)} training "
          f"images {chosen}")
    return {"deploy, default residual l":
            onnx_deploy.session(onnx_deploy.to_onnx(net), threads=2),
            "deploy, residual l chosen on training images":
            onnx_deploy.session(onnx_deploy.to_onnx(net, residual_l=chosen), threads=2),
            "deploy, default residual l, int8 weights only (VNNI)":
            onnx_deploy.session(onnx_deploy.to_onnx(net, portable=False), threads=2)}


def cifar(npz: str | None, bits: int, weights: str, calib_images: int, limit: int | None,
          save_npz: str | None = None) -> None:
    import jax  # noqa: PLC0415

    from faq_jax import calibrate, converted  # noqa: PLC0415

    per_class = None if limit is None else -(-limit // 10)
    x, labels = read_jpegs(TEST, limit_per_class=per_class)
    xc, _ = read_jpegs(TRAIN, limit_per_class=max(calib_images, 26) // 10 + 1)
    rng = np.random.default_rng(0)
    xc = xc[rng.permutation(len(xc))]
    if npz:
        net = export.load(npz)
        print(f"network: {npz}")
    else:
        model = models.create("cifar_resnet20", policy=policy_lib.paper_policy(bits, bits),
                              num_classes=10)
        fp = converted.load(weights, arch="cifar_resnet20")
        variables = {k: fp[k] for k in ("params", "batch_stats")}
        init = jax.eval_shape(lambda v: model.init(jax.random.key(0), v),
                              jax.ShapeDtypeStruct((1, 32, 32, 3), np.float32))
        variables["quant"] = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), init["quant"])
        batches = [xc[i:i + 128] for i in range(0, calib_images, 128)]
        variables["quant"] = calibrate.calibrate(model, variables, batches)
        net = export.export(model, variables, input_shape=(32, 32, 3))
        if save_npz:
            export.save(net, save_npz)
        print(f"network: cifar_resnet20 W{bits}A{bits} (paper rules) from {weights}, "
              f"calibrated on {calib_images} training images, not fine-tuned")
    calib_codes = export.input_codes(net, xc[:256])
    reference = bit_exact_onnx(net)
    spot = export.input_codes(net, x[:64])
    assert np.array_equal(reference(spot), executor_logits(net, spot))
    print("reference: the bit-exact ONNX model (equal to export.run bit for bit; checked "
          "here on the first 64 images)")
    compare(net, x, labels, _sessions(net, calib_codes), reference=reference)


def imagenet(archs: list[str], images: int, bits: int) -> None:
    x, labels = read_jpegs(TEST, limit_per_class=-(-images // 10), size=224)
    x, labels = x[:images], labels[:images]
    xc, _ = read_jpegs(TRAIN, limit_per_class=1, size=224)
    xc = xc[:2]  # 2 training images for the residual l choice (the executor: ~30 s/image)
    for arch in archs:
        model = models.create(arch, policy=policy_lib.paper_policy(bits, bits))
        variables = export.random_variables(model, (224, 224, 3), batch=2, calib_batches=1)
        net = export.export(model, variables, input_shape=(224, 224, 3))
        print(f"\n{arch} W{bits}A{bits}, random weights, calibrated on one N(0, 1) batch; "
              f"{images} CIFAR-10 test images at 224 (1000 random classes: the accuracy "
              "column is meaningless)")
        calib = export.input_codes(net, xc)
        reference = bit_exact_onnx(net)
        spot = export.input_codes(net, x[:1])
        assert np.array_equal(reference(spot), executor_logits(net, spot))
        print("reference: the bit-exact ONNX model (equal to export.run bit for bit; "
              "checked here on the first image)")
        compare(net, x, labels, _sessions(net, calib), batch=50, reference=reference)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cifar")
    c.add_argument("--npz", default=None, help="an exported network (else built, --bits)")
    c.add_argument("--bits", type=int, default=4)
    c.add_argument("--weights", default=CONVERTED, help="converted cifar_resnet20 variables")
    c.add_argument("--calib_images", type=int, default=640)
    c.add_argument("--limit", type=int, default=None, help="test images (default: all)")
    c.add_argument("--save_npz", default=None, help="also save the network built here")
    i = sub.add_parser("imagenet")
    i.add_argument("--archs", default="resnet18,resnet50")
    i.add_argument("--images", type=int, default=1000)
    i.add_argument("--bits", type=int, default=8)
    args = ap.parse_args()
    if args.cmd == "cifar":
        cifar(args.npz, args.bits, args.weights, args.calib_images, args.limit,
              args.save_npz)
    else:
        imagenet(args.archs.split(","), args.images, args.bits)


if __name__ == "__main__":
    main()
