"""TensorFlow-free input (``config.data.loader="numpy"``) for datasets whose images already
have the model's size: CIFAR-10 as arrays (python/binary archives), the CIFAR-10 JPEG
archive and image folders of image_size x image_size files (decoded with PIL).

It yields what the ``"tf"`` loader yields for the same examples, except for the random
draws of the training augmentation: the same order (:func:`faq_jax.data.pipeline` chooses
the indices), identical evaluation batches (PIL's JPEG decoding equals TensorFlow's
``INTEGER_ACCURATE``; the same float32 normalisation), and ``RandomCrop(size, padding=4) +
RandomHorizontalFlip`` drawn from NumPy generators keyed by (seed, epoch, position in the
epoch), so the stream resumes exactly and is the same for any process count.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from faq_jax.data import cifar10

PAD = 4  # RandomCrop padding of the "cifar" augmentation


def images(split: Any, index: np.ndarray, size: int) -> np.ndarray:
    """uint8 [len(index), size, size, 3] of ``split[index]`` (ArraySplit: gathered;
    FileSplit: decoded with PIL, RGB). ValueError names a file that cannot be decoded or
    has another size."""
    if isinstance(split, cifar10.ArraySplit):
        out = split.images[index]
        if out.shape[1:3] != (size, size):
            raise ValueError(f"the images are {out.shape[1]}x{out.shape[2]}, the model takes "
                             f"{size}x{size}: the numpy loader does not resize; set "
                             f"config.data.image_size={out.shape[1]} or use "
                             "config.data.loader='tf'")
        return out
    return np.stack([_decode(p, size) for p in split.paths[index]]) if len(index) else \
        np.zeros((0, size, size, 3), np.uint8)


IN_MEMORY_BYTES = 2 << 30  # image folders up to this decoded size are decoded once


def in_memory(split: Any, size: int) -> Any:
    """``split`` as a :class:`cifar10.ArraySplit` when it is an image folder whose decoded
    images fit :data:`IN_MEMORY_BYTES` (CIFAR-10's JPEG archive: 150 MB), so every epoch
    gathers from memory instead of decoding again; otherwise ``split`` unchanged."""
    if isinstance(split, cifar10.ArraySplit) or len(split.paths) * size * size * 3 > \
            IN_MEMORY_BYTES:
        return split
    return cifar10.ArraySplit(images(split, np.arange(len(split.paths)), size),
                              split.labels, split.classes)


def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image  # noqa: PLC0415 - only this loader needs PIL

    try:
        with Image.open(path) as im:
            image = np.asarray(im.convert("RGB"))
    except (OSError, ValueError) as e:
        raise ValueError(f"Cannot decode image file(s): {path} ({e})") from e
    if image.shape[:2] != (size, size):
        raise ValueError(f"{path} is {image.shape[1]}x{image.shape[0]}, the model takes "
                         f"{size}x{size}: the numpy loader does not resize; use "
                         "config.data.loader='tf'")
    return image


class Augmentation:
    """The "cifar" augmentation's draws for one epoch: a crop offset in [0, 2*PAD] per axis
    and a flip bit per position of the epoch."""

    def __init__(self, seed: int, epoch: int, num_positions: int):
        rng = np.random.default_rng([seed, epoch, 2])
        self.offsets = rng.integers(0, 2 * PAD + 1, (num_positions, 2))
        self.flips = rng.random(num_positions) < 0.5

    def __call__(self, batch: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """``RandomCrop(size, padding=PAD) + RandomHorizontalFlip`` (zero padding) of a
        uint8 [B, H, W, 3] batch at these epoch positions."""
        n, h, w, _ = batch.shape
        padded = np.pad(batch, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
        out = np.empty_like(batch)
        for i, p in enumerate(positions):
            top, left = self.offsets[p]
            crop = padded[i, top : top + h, left : left + w]
            out[i] = crop[:, ::-1] if self.flips[p] else crop
        return out


def normalize(batch: np.ndarray, mean: Sequence[float], std: Sequence[float],
              dtype: Any) -> np.ndarray:
    """``ToTensor + Normalize`` as the tf loader computes it (one float32 multiply-add per
    value), cast to ``dtype``."""
    scale = np.array([1.0 / (255.0 * s) for s in std], np.float32)
    offset = np.array([-m / s for m, s in zip(mean, std, strict=True)], np.float32)
    return (batch.astype(np.float32) * scale + offset).astype(dtype)


def prefetch(batches: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """``batches``, produced ``depth`` ahead by a background thread (decoding and augmenting
    overlap the training step); an exception there is raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def work() -> None:
        try:
            for item in batches:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            q.put((done, e))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stop.set()

