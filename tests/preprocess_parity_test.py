"""Eval preprocessing vs torchvision on real photographs, and the TF-then-torchvision guard."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")  # Before anything that loads TensorFlow.
transforms = pytest.importorskip("torchvision.transforms")

import numpy as np  # noqa: E402
import skimage.data  # noqa: E402
from PIL import Image  # noqa: E402

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "immunohistochemistry")


def photo_jpeg(name: str) -> bytes:
    image = getattr(skimage.data, name)()
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    buffer = io.BytesIO()
    Image.fromarray(image[..., :3]).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


# Measured (Pillow JPEG quality 90, TF INTEGER_ACCURATE decode; README / docs/input_pipeline.md):
# 256->224: identical 99.9367%, within 1/255 100%, mean |diff| 0.00064/255, max 1/255;
# 342->299: identical 99.8625%, within 1/255 100%, mean |diff| 0.00138/255, max 1/255.
# Asserted: every value within 1/255, and identical share / mean |diff| with a small margin.
@pytest.mark.parametrize("image_size,resize,min_identical,max_mean", [
    (224, 256, 0.999, 0.001), (299, 342, 0.998, 0.002)])
def test_eval_matches_torchvision(image_size, resize, min_identical, max_mean):
    from faq_jax.data import preprocess

    tf = preprocess.tf
    reference = transforms.Compose([
        transforms.Resize(resize), transforms.CenterCrop(image_size), transforms.ToTensor(),
        transforms.Normalize(MEAN, STD),
    ])  # fmt: skip
    diffs = []
    for name in PHOTOS:
        jpeg = photo_jpeg(name)
        # Both sides start from the same JPEG; PIL and TF (INTEGER_ACCURATE) decode it alike.
        pil = Image.open(io.BytesIO(jpeg)).convert("RGB")
        np.testing.assert_array_equal(
            tf.io.decode_jpeg(jpeg, channels=3, dct_method="INTEGER_ACCURATE").numpy(),
            np.asarray(pil),
        )
        expected = reference(pil).numpy().transpose(1, 2, 0)
        ours = preprocess.eval_image(tf.constant(jpeg), image_size, resize)
        ours = preprocess.normalize(ours, MEAN, STD).numpy()
        assert ours.shape == expected.shape == (image_size, image_size, 3)
        diffs.append((np.abs(ours - expected) * np.array(STD) * 255).ravel())  # In 1/255 units.
    diff = np.concatenate(diffs)
    within = float(np.mean(diff <= 1 + 1e-3))  # 1e-3: float32 noise of the normalisation
    identical = float(np.mean(diff < 1e-3))
    print(
        f"eval {resize}->{image_size} vs torchvision on {len(PHOTOS)} photos: "
        f"identical {identical:.4%}, within 1/255 {within:.4%}, "
        f"mean |diff| {diff.mean():.5f}/255, max {diff.max():.3f}/255"
    )
    assert within == 1.0 and diff.max() <= 1 + 1e-3
    assert identical >= min_identical and diff.mean() <= max_mean


def test_tensorflow_then_torchvision_does_not_crash():
    pytest.importorskip("torchvision")
    code = (
        "from faq_jax.data import pipeline, preprocess\n"
        "tf = preprocess.tf\n"
        "ds = tf.data.Dataset.range(4).map(lambda x: x * 2).batch(2)\n"
        "assert [b.tolist() for b in ds.as_numpy_iterator()] == [[0, 2], [4, 6]]\n"
        "import torchvision\n"
        "print('ok', torchvision.__version__)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert result.returncode == 0, (result.returncode, result.stderr[-3000:])
    assert "ok" in result.stdout
