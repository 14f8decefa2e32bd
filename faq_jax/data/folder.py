"""Image-folder datasets (torchvision ``ImageFolder`` layout), archive extraction, held-out splits.

Pure Python/NumPy file listing: no TensorFlow here. A dataset split is a :class:`FileSplit`
(paths + labels in torchvision's order); :mod:`faq_jax.data.pipeline` turns it into batches.
"""

from __future__ import annotations

import gzip
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Sequence
from typing import NamedTuple, TypeVar

import numpy as np

from faq_jax import lazy_imports

# Formats tf.io.decode_image reads (torchvision also lists .ppm/.pgm/.tif, TF cannot decode).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")

T = TypeVar("T", bound=tuple)


class FileSplit(NamedTuple):
    """One split of an image-folder dataset, in torchvision ``ImageFolder`` order."""

    paths: np.ndarray  # [N] str: image files.
    labels: np.ndarray  # [N] int32: class index.
    classes: tuple[str, ...]  # Class names; index = label.


def find_classes(root: str) -> tuple[str, ...]:
    """Sorted class folder names, as ``torchvision.datasets.folder.find_classes``."""
    if not root:
        raise ValueError("The image-folder path is empty: set config.data.train_dir/eval_dir.")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image-folder dataset not found: {root!r} is not a directory.")
    classes = sorted(entry.name for entry in os.scandir(root) if entry.is_dir())
    if not classes:
        raise FileNotFoundError(
            f"Couldn't find any class folder in {root!r}: expected root/<class>/<image>."
        )
    return tuple(classes)


def list_image_folder(root: str, classes: Sequence[str] | None = None) -> FileSplit:
    """Lists ``root/<class>/**/<image>`` exactly as torchvision's ``make_dataset``.

    Args:
      root: dataset root.
      classes: class names to use (e.g. those of the training folder); default: the
        sorted sub-folders of ``root``.

    Returns:
      The split, classes in sorted order, files sorted within each class.
    """
    found = find_classes(root)
    classes = tuple(classes) if classes is not None else found
    if set(found) - set(classes):
        raise ValueError(
            f"{root!r} has class folders absent from the training classes: "
            f"{sorted(set(found) - set(classes))}"
        )
    paths, labels, empty = [], [], []
    for index, name in enumerate(classes):
        class_dir = os.path.join(root, name)
        n_before = len(paths)
        if os.path.isdir(class_dir):
            for dirpath, _, fnames in sorted(os.walk(class_dir, followlinks=True)):
                for fname in sorted(fnames):
                    if fname.lower().endswith(IMG_EXTENSIONS):
                        paths.append(os.path.join(dirpath, fname))
                        labels.append(index)
            if len(paths) == n_before:
                empty.append(name)
    if empty:
        raise FileNotFoundError(
            f"Found no valid image file ({', '.join(IMG_EXTENSIONS)}) for classes "
            f"{empty} in {root!r}."
        )
    palette = [p for p in paths if p.lower().endswith(".bmp") and _bmp_bits(p) <= 8]
    if palette:
        raise ValueError(
            f"{len(palette)} palette BMP file(s) (<= 8 bits per pixel), e.g. {palette[:3]}: "
            "TensorFlow's BMP decoder ignores the colour table and would feed wrong colours. "
            "Convert them to PNG (e.g. PIL: Image.open(p).convert('RGB').save(q))."
        )
    return FileSplit(np.array(paths, dtype=str), np.array(labels, dtype=np.int32), classes)


def _bmp_bits(path: str) -> int:
    """Bits per pixel of a BMP file (header offset 28); 24 if the header is unreadable."""
    with open(path, "rb") as f:
        header = f.read(30)
    if len(header) < 30 or header[:2] != b"BM":
        return 24  # not a BMP at all: the decoder reports it
    return int.from_bytes(header[28:30], "little")


def last_per_class(labels: np.ndarray, classes: Sequence[str], n_per_class: int) -> np.ndarray:
    """[N] bool, True on the last ``n_per_class`` examples (in ``labels``' order) of each class."""
    held = np.zeros(len(labels), dtype=bool)
    for label, name in enumerate(classes):
        (idx,) = np.nonzero(labels == label)
        if len(idx) <= n_per_class:
            raise ValueError(
                f"Class {name!r} has {len(idx)} images, not more than "
                f"val_per_class={n_per_class}."
            )
        held[idx[len(idx) - n_per_class :]] = True
    return held


def take(split: T, mask: np.ndarray) -> T:
    """The examples of ``split`` (any NamedTuple of per-example arrays) where ``mask``."""
    return type(split)(*(f[mask] if isinstance(f, np.ndarray) else f for f in split))


def split_last_per_class(split: T, n_per_class: int) -> tuple[T, T]:
    """Holds out the last ``n_per_class`` examples (sorted order) of every class.

    Args:
      split: a :class:`FileSplit` or any NamedTuple with ``labels``, ``classes`` and
        per-example arrays.
      n_per_class: examples held out per class (> 0).

    Returns:
      ``(rest, held_out)``, both in the original order.
    """
    if n_per_class < 1:
        raise ValueError(
            f"config.data.val_per_class={n_per_class} leaves no validation images: set it > 0, "
            "or evaluate on the test set (config.data.eval_split='test')."
        )
    held = last_per_class(split.labels, split.classes, n_per_class)
    return take(split, ~held), take(split, held)


def default_cache_dir(cache_dir: str = "") -> str:
    """``cache_dir`` or ``~/.cache/faq_jax``."""
    return os.path.expanduser(cache_dir or os.path.join("~", ".cache", "faq_jax"))


def extract_once(archive: str, cache_dir: str, field: str = "config.data.archive") -> str:
    """Extracts a tar archive into ``cache_dir/<archive name>/`` once; returns that folder.

    Extraction goes to a temporary sibling folder which is renamed when complete, so an
    interrupted extraction is never mistaken for a finished one and concurrent processes
    on one host are safe. ``field`` names the config field in error messages.
    """
    if not archive:
        raise ValueError(f"{field} is empty: set it to the archive's path.")
    if not os.path.isfile(archive):
        raise FileNotFoundError(f"{field}: archive not found: {archive!r}.")
    name = os.path.basename(archive)
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    cache_dir = default_cache_dir(cache_dir)
    target = os.path.join(cache_dir, name)
    if os.path.isdir(target):
        return target
    os.makedirs(cache_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{name}-", dir=cache_dir)
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")
                # gzip checks its CRC only at the end of the stream, past the tar's last
                # block: read on, or damage inside a member would pass unnoticed.
                while tar.fileobj.read(1 << 20):
                    pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ValueError(
                f"{field}: cannot extract {archive!r} ({type(e).__name__}: {e}); the file is "
                "truncated, corrupt or not a tar archive: download or copy it again."
            ) from e
        try:
            os.rename(tmp, target)
        except OSError:  # Another process finished first.
            if not os.path.isdir(target):
                raise
    finally:
        if os.path.isdir(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def find_undecodable(paths: Sequence[str]) -> list[tuple[str, str]]:
    """``(path, error)`` for every file TensorFlow cannot read or decode (slow; errors only)."""
    tf = lazy_imports.tensorflow()
    bad = []
    for path in paths:
        try:
            tf.io.decode_image(tf.io.read_file(path), channels=0, expand_animations=False)
        except (tf.errors.OpError, OSError) as e:
            bad.append((str(path), str(e).strip().splitlines()[0] if str(e).strip() else repr(e)))
    return bad
