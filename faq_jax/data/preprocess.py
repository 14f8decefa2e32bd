"""TensorFlow image ops that reproduce torchvision's ImageNet and CIFAR transforms.

Importing this module loads TensorFlow (through :mod:`faq_jax.lazy_imports`, which loads
torch first when installed). Every random op is *stateless*: it takes a ``[2]`` int64 seed,
so an example's augmentation depends only on (seed, epoch, position) and a resumed run
redraws exactly what an uninterrupted run would have drawn.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from faq_jax import lazy_imports

tf = lazy_imports.tensorflow()

_TRIES = 10  # torchvision.transforms.RandomResizedCrop.get_params tries 10 windows.


def _decode_full(image_bytes: tf.Tensor, dct_method: str = "INTEGER_ACCURATE") -> tf.Tensor:
    """Decodes any JPEG/PNG/GIF/BMP/WebP to uint8 [H, W, 3], as PIL's ``convert("RGB")``:
    grayscale replicated, alpha dropped (WebP's decoder refuses ``channels=3`` for RGBA)."""

    def other() -> tf.Tensor:
        image = tf.io.decode_image(image_bytes, channels=0, expand_animations=False)
        image = tf.cond(tf.shape(image)[-1] < 3,
                        lambda: tf.tile(image[..., :1], [1, 1, 3]), lambda: image[..., :3])
        return tf.ensure_shape(image, [None, None, 3])

    return tf.cond(
        tf.io.is_jpeg(image_bytes),
        # INTEGER_ACCURATE is libjpeg's JDCT_ISLOW, the default PIL decodes with.
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method=dct_method),
        other,
    )


def random_resized_crop_window(
    height: tf.Tensor,
    width: tf.Tensor,
    uniforms: tf.Tensor,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tf.Tensor:
    """torchvision ``RandomResizedCrop.get_params`` with pre-drawn uniforms.

    Args:
      height: image height (int32 scalar).
      width: image width (int32 scalar).
      uniforms: float32 [2 * 10 + 2] values in [0, 1): 10 areas, 10 log-ratios, 2 offsets.
      scale: range of the crop area as a fraction of the image area.
      ratio: range of the crop aspect ratio (width / height).

    Returns:
      int32 [4] window ``(top, left, crop_height, crop_width)``; the first of the 10 tries
      that fits, else torchvision's centre-crop fallback.
    """
    h_f = tf.cast(height, tf.float32)
    w_f = tf.cast(width, tf.float32)
    area = h_f * w_f
    target_area = area * (scale[0] + (scale[1] - scale[0]) * uniforms[:_TRIES])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = tf.exp(log_lo + (log_hi - log_lo) * uniforms[_TRIES : 2 * _TRIES])
    # tf.round is round-half-to-even, like Python's round() in torchvision.
    ws = tf.cast(tf.round(tf.sqrt(target_area * aspect)), tf.int32)
    hs = tf.cast(tf.round(tf.sqrt(target_area / aspect)), tf.int32)
    fits = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)

    # Fallback: the largest centred crop whose aspect ratio lies inside `ratio`.
    in_ratio = w_f / h_f
    fb_w = tf.where(in_ratio > ratio[1], tf.cast(tf.round(h_f * ratio[1]), tf.int32), width)
    fb_h = tf.where(in_ratio < ratio[0], tf.cast(tf.round(w_f / ratio[0]), tf.int32), height)
    any_fits = tf.reduce_any(fits)
    crop_h = tf.where(any_fits, hs[first], fb_h)
    crop_w = tf.where(any_fits, ws[first], fb_w)
    # randint(0, H - h + 1) == floor(u * (H - h + 1)) for u uniform in [0, 1).
    rand_top = tf.cast(uniforms[2 * _TRIES] * tf.cast(height - crop_h + 1, tf.float32), tf.int32)
    rand_left = tf.cast(
        uniforms[2 * _TRIES + 1] * tf.cast(width - crop_w + 1, tf.float32), tf.int32
    )
    top = tf.where(any_fits, tf.minimum(rand_top, height - crop_h), (height - crop_h) // 2)
    left = tf.where(any_fits, tf.minimum(rand_left, width - crop_w), (width - crop_w) // 2)
    return tf.stack([top, left, crop_h, crop_w])


def _decode_random_crop(image_bytes: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
    """Decodes only the RandomResizedCrop window of a JPEG (full decode for other formats)."""

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(image_bytes)
        window = random_resized_crop_window(shape[0], shape[1], uniforms)
        return tf.image.decode_and_crop_jpeg(
            image_bytes, window, channels=3, dct_method="INTEGER_ACCURATE"
        )

    return tf.cond(tf.io.is_jpeg(image_bytes), jpeg,
                   lambda: _random_crop(_decode_full(image_bytes), uniforms))


def _random_crop(image: tf.Tensor, uniforms: tf.Tensor) -> tf.Tensor:
    """The RandomResizedCrop window of a decoded uint8 [H, W, 3] image."""
    shape = tf.shape(image)
    top, left, h, w = tf.unstack(random_resized_crop_window(shape[0], shape[1], uniforms))
    return image[top : top + h, left : left + w]


def _decoded(image: tf.Tensor) -> tf.Tensor:
    """uint8 [H, W, 3]: ``image`` itself if already decoded, else decoded from its bytes."""
    return image if image.dtype == tf.uint8 else _decode_full(image)


def normalize(image: tf.Tensor, mean: Sequence[float], std: Sequence[float]) -> tf.Tensor:
    """``ToTensor + Normalize`` on an HWC image with values in [0, 255]."""
    # One multiply-add per value: (x / 255 - mean) / std == x * scale + offset.
    scale = tf.constant([1.0 / (255.0 * s) for s in std], tf.float32)
    offset = tf.constant([-m / s for m, s in zip(mean, std, strict=True)], tf.float32)
    return tf.cast(image, tf.float32) * scale + offset


def train_imagenet(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """``RandomResizedCrop(image_size) + RandomHorizontalFlip``; float32 [S, S, 3] in [0, 255].

    Args:
      image: encoded image (scalar string) or decoded uint8 [H, W, 3].
      seed: int64 [2] stateless seed of this example.
      image_size: output side.
    """
    u = tf.random.stateless_uniform([2 * _TRIES + 3], seed=seed)
    if image.dtype == tf.uint8:
        crop = _random_crop(image, u[: 2 * _TRIES + 2])
    else:  # Decodes only the crop window of a JPEG.
        crop = _decode_random_crop(image, u[: 2 * _TRIES + 2])
    # Flipping commutes with the (symmetric) resize and is cheaper on the uint8 crop.
    crop = tf.cond(u[-1] < 0.5, lambda: tf.reverse(crop, axis=[1]), lambda: crop)
    shape = tf.shape(crop)
    size = [image_size, image_size]
    # Bilinear with antialiasing, like torchvision's PIL path. Antialiasing changes nothing
    # when both sides grow, so those crops take the faster plain bilinear kernel.
    return tf.cond(
        (shape[0] <= image_size) & (shape[1] <= image_size),
        lambda: tf.image.resize(crop, size, method="bilinear"),
        lambda: tf.image.resize(crop, size, method="bilinear", antialias=True),
    )


def train_cifar(image: tf.Tensor, seed: tf.Tensor, image_size: int) -> tf.Tensor:
    """``RandomCrop(image_size, padding=4) + RandomHorizontalFlip`` (zero padding).

    ``image``: encoded (scalar string) or decoded uint8 [H, W, 3]; float32 result in [0, 255].
    """
    u = tf.random.stateless_uniform([3], seed=seed)
    image = _resize_if_needed(_decoded(image), image_size)
    padded = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
    top = tf.cast(u[0] * 9.0, tf.int32)  # randint(0, 8) over the 8 extra rows.
    left = tf.cast(u[1] * 9.0, tf.int32)
    image = padded[top : top + image_size, left : left + image_size]
    image = tf.cond(u[2] < 0.5, lambda: tf.reverse(image, axis=[1]), lambda: image)
    return tf.cast(image, tf.float32)


def _resize_if_needed(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Squares an image to image_size (uint8) unless it already has that shape."""
    shape = tf.shape(image)
    return tf.cond(
        (shape[0] == image_size) & (shape[1] == image_size),
        lambda: image,
        lambda: _round_uint8(
            tf.image.resize(image, [image_size, image_size], method="bilinear", antialias=True)
        ),
    )


def _round_uint8(image: tf.Tensor) -> tf.Tensor:
    """Rounds half up and saturates to uint8, as PIL does after each resampling pass."""
    return tf.cast(tf.clip_by_value(tf.floor(image + 0.5), 0.0, 255.0), tf.uint8)


def pil_bilinear_resize(image: tf.Tensor, new_h: tf.Tensor, new_w: tf.Tensor) -> tf.Tensor:
    """PIL ``Image.resize(..., BILINEAR)``: antialiased, horizontal pass first, uint8 after each.

    Args:
      image: uint8 [H, W, 3].
      new_h: output height (int32 scalar).
      new_w: output width (int32 scalar).

    Returns:
      uint8 [new_h, new_w, 3]. A pass whose size does not change is skipped, as in PIL.
    """
    shape = tf.shape(image)

    def horizontal() -> tf.Tensor:
        resized = tf.image.resize(image, tf.stack([shape[0], new_w]), antialias=True)
        return _round_uint8(resized)

    image = tf.cond(new_w == shape[1], lambda: image, horizontal)

    def vertical() -> tf.Tensor:
        resized = tf.image.resize(image, tf.stack([new_h, new_w]), antialias=True)
        return _round_uint8(resized)

    return tf.cond(new_h == shape[0], lambda: image, vertical)


def resize_center_crop(image: tf.Tensor, image_size: int, resize_size: int) -> tf.Tensor:
    """``Resize(resize_size) + CenterCrop(image_size)`` on uint8 [H, W, 3], as torchvision.

    The long side is ``int(resize_size * long / short)`` (truncation, in float64) and the
    crop offsets are ``int(round((size - crop) / 2))`` (round half to even).
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.cast(tf.minimum(h, w), tf.float64)
    long = tf.cast(tf.maximum(h, w), tf.float64)
    new_long = tf.cast(tf.floor(resize_size * long / short), tf.int32)
    new_h = tf.where(h <= w, resize_size, new_long)
    new_w = tf.where(h <= w, new_long, resize_size)
    image = pil_bilinear_resize(image, new_h, new_w)
    top = tf.cast(tf.round(tf.cast(new_h - image_size, tf.float64) / 2.0), tf.int32)
    left = tf.cast(tf.round(tf.cast(new_w - image_size, tf.float64) / 2.0), tf.int32)
    crop = image[top : top + image_size, left : left + image_size]
    return tf.ensure_shape(crop, [image_size, image_size, 3])


def eval_image(image: tf.Tensor, image_size: int, resize_size: int) -> tf.Tensor:
    """Decode (unless uint8 already) + ``Resize(resize_size) + CenterCrop(image_size)``;
    float32 in [0, 255]."""
    image = resize_center_crop(_decoded(image), image_size, resize_size)
    return tf.cast(image, tf.float32)
