"""Where Inception-v3's input quantizer sits, and which l it needs.

torchvision's Inception-v3 maps the ImageNet-normalised image to ``2 p - 1`` in [-1, 1]
(``transform_input``) before its first conv, so faq_jax's input quantizer reads that range.
The paper's input l = -5 (steps of 1/32, range ±3.97, meant for a mean/std-normalised
image) then uses 65 of the 255 signed 8-bit codes: one code for every ~4 pixel values.
l = -7 (steps of 1/128, range ±0.992) gives each pixel value its own code except 254/255.

Prints, for real CIFAR-10 test images resized to 299 and the float Inception-v3 with random
(torchvision-initialised) weights: the codes used, the input error in pixel steps (2/255),
the share of clipped values, and the logit error of quantizing only the input (every other
layer in float), per l. Random weights show the code usage; their logit errors say little
about a trained network (measured: no trend across l)::

    python benchmarks/inception_input_lsb.py --images 16
"""

from __future__ import annotations

import argparse
import glob
import os
import tarfile
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from faq_jax import models, quant
from faq_jax.config import defaults

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load_images(n: int) -> np.ndarray:
    """``n`` CIFAR-10 test images (the first of each class in turn), bilinear 299x299, [0, 1]."""
    archive = defaults.shared_cifar10_archive(__file__).replace(
        "cifar10-jpeg", "cifar10-test-jpeg")
    tmp = tempfile.mkdtemp()
    with tarfile.open(archive) as tar:
        tar.extractall(tmp, filter="data")
    classes = sorted(os.listdir(os.path.join(tmp, "test")))
    files = [sorted(glob.glob(os.path.join(tmp, "test", c, "*.jpg"))) for c in classes]
    paths = [files[i % 10][i // 10] for i in range(n)]
    return np.stack([np.asarray(Image.open(p).convert("RGB").resize((299, 299),
                     Image.BILINEAR), np.float32) / 255.0 for p in paths])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=16)
    args = ap.parse_args()
    pixels = load_images(args.images)
    transformed = jnp.asarray(2.0 * pixels - 1.0)  # = transform_input of the normalised image
    model = models.create("inception_v3", num_classes=1000, transform_input=False,
                          aux_logits=False)
    variables = jax.jit(model.init)(jax.random.key(0), transformed[:1])
    apply = jax.jit(lambda x: model.apply(variables, x, train=False))
    ref = np.asarray(apply(transformed))
    print(f"{args.images} CIFAR-10 test images at 299x299, Inception-v3 random weights, "
          "only the input quantized")
    print(f"{'l':>3s} {'codes used':>10s} {'rms err (px steps)':>18s} {'max err':>7s} "
          f"{'clipped px':>10s} {'max rel logit err':>18s} {'top-1 agree':>11s}")
    pixel_step = 2.0 / 255.0
    for lsb in (-5, -6, -7):
        q = quant.fixed_point(transformed, bits=8, lsb=lsb, signed=True)
        codes = np.unique(np.round(np.asarray(q) * 2.0 ** -lsb)).size
        err = float(jnp.max(jnp.abs(q - transformed))) / pixel_step
        rms = float(jnp.sqrt(jnp.mean((q - transformed) ** 2))) / pixel_step
        clipped = float(jnp.mean(jnp.abs(transformed) > 127 * 2.0 ** lsb)) * 100
        out = np.asarray(apply(q))
        rel = float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))
        agree = float(np.mean(out.argmax(-1) == ref.argmax(-1))) * 100
        print(f"{lsb:3d} {codes:10d} {rms:18.2f} {err:7.2f} {clipped:9.3f}% {rel:18.2e} "
              f"{agree:10.1f}%")


if __name__ == "__main__":
    main()
