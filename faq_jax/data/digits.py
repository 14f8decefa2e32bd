"""scikit-learn's embedded digits (1797 8x8 grayscale images) as 3-channel float images.

Pure NumPy: the default dataset of the main job, no download and no TensorFlow. The last
:data:`VAL_PER_CLASS` images of each class (in the dataset's order) are the validation split.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

VAL_PER_CLASS = 30  # 10 classes x 30 = 300 validation images; 1497 for training.


class Digits(NamedTuple):
    """The two splits; images [N, 8, 8] float32 in [0, 1] (pixel values / 16)."""

    train_x: np.ndarray
    train_y: np.ndarray  # int32
    eval_x: np.ndarray
    eval_y: np.ndarray
    mean: float  # Pixel mean of the training split (all channels alike).
    std: float  # Pixel standard deviation of the training split.


@functools.lru_cache(maxsize=1)
def load() -> Digits:
    """Loads and splits ``sklearn.datasets.load_digits`` (cached)."""
    from sklearn import datasets

    digits = datasets.load_digits()
    x = (digits.images / 16.0).astype(np.float32)
    y = digits.target.astype(np.int32)
    held = np.zeros(len(y), dtype=bool)
    for label in range(10):
        held[np.nonzero(y == label)[0][-VAL_PER_CLASS:]] = True
    train = x[~held]
    return Digits(train, y[~held], x[held], y[held], float(train.mean()), float(train.std()))


def random_shift(x: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shifts each [8, 8] image by -1, 0 or +1 pixel per axis (zero fill = background).

    ``shifts``: [2, len(x)] ints in {0, 1, 2} (row, column offset + 1), drawn per example.
    """
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    dy, dx = shifts[:, :, None, None]
    rows = dy + np.arange(8)[None, :, None]
    cols = dx + np.arange(8)[None, None, :]
    return padded[np.arange(len(x))[:, None, None], rows, cols]


def to_model_images(x: np.ndarray, image_size: int, dtype: Any, mean: float, std: float):
    """[B, 8, 8] in [0, 1] -> normalised [B, S, S, 3] (nearest upsampling by S // 8)."""
    factor = image_size // 8
    if factor > 1:
        x = x.repeat(factor, axis=1).repeat(factor, axis=2)
    x = (x - mean) / std
    return np.repeat(x[..., None], 3, axis=-1).astype(dtype)
