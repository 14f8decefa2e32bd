"""TFDS ``cifar10``: find it prepared, build it offline from ``cifar-10-binary.tar.gz``, read it.

TFDS's builder downloads ``https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz`` (the
*binary* format). Offline, TFDS takes that file from a ``manual_dir`` instead
(``DownloadConfig(manual_dir=...)``), after checking its size and sha256 against the ones
TFDS registers for the URL. Usage, once, on storage every host can read::

    python -m faq_jax.prepare_cifar10 --data_dir /data/tfds                    # downloads
    python -m faq_jax.prepare_cifar10 --data_dir /data/tfds --manual_dir /data/cifar  # offline

then set ``config.data.source=tfds`` and ``config.data.data_dir`` to the same folder.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from faq_jax import datasets_cifar, lazy_imports

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
ARCHIVE = "cifar-10-binary.tar.gz"


def builder(data_dir: str = "", manual_dir: str = "", download: bool = False) -> Any:
    """The prepared TFDS ``cifar10`` builder, built first from ``manual_dir`` if needed.

    Args:
      data_dir: TFDS data_dir ("" = the TFDS default).
      manual_dir: folder holding the official ``cifar-10-binary.tar.gz``.
      download: if not prepared and ``manual_dir`` is empty, download (needs internet).

    Raises:
      FileNotFoundError: not prepared, and no archive to build it from (and no download).
    """
    tfds = lazy_imports.tensorflow_datasets()
    data_dir = os.path.expanduser(data_dir) if data_dir else ""
    manual_dir = os.path.expanduser(manual_dir) if manual_dir else ""
    cifar = tfds.builder("cifar10", data_dir=data_dir or None)
    if cifar.is_prepared():
        return cifar
    if manual_dir and os.path.isfile(os.path.join(manual_dir, ARCHIVE)):
        config = tfds.download.DownloadConfig(manual_dir=manual_dir)
    elif download:
        config = None
    else:
        where = f"manual_dir={manual_dir!r}" if manual_dir else "config.data.manual_dir (empty)"
        raise FileNotFoundError(
            f"TFDS 'cifar10' is not prepared in config.data.data_dir="
            f"{data_dir or '<TFDS default>'!r}, and {ARCHIVE} is not in {where}. Either run "
            "`python -m faq_jax.prepare_cifar10 --data_dir DIR` on a machine with internet "
            f"(or download {URL} into a folder and add `--manual_dir FOLDER`), then point "
            "config.data.data_dir at DIR; or read an archive directly: "
            "config.data.source='archive', config.data.archive=cifar-10-python.tar.gz, "
            "cifar-10-binary.tar.gz or cifar10-jpeg.tar.gz.")
    cifar.download_and_prepare(download_config=config)
    return cifar


def arrays(data_dir: str = "", manual_dir: str = "") -> tuple[datasets_cifar.ArraySplit, ...]:
    """``(train, test)`` of TFDS ``cifar10`` as uint8 arrays, in the archive's order.

    TFDS stores the examples shuffled; its ``id`` (``train_00042``: the 43rd image of
    ``data_batch_1..5``) puts them back, so the splits equal the archives' arrays.
    """
    tfds = lazy_imports.tensorflow_datasets()
    cifar = builder(data_dir, manual_dir)
    names = tuple(cifar.info.features["label"].names)
    if names != datasets_cifar.CLASSES:
        raise ValueError(f"TFDS cifar10 in {data_dir!r} names the classes {names}.")
    out = []
    for split in ("train", "test"):
        ds = tfds.as_numpy(cifar.as_dataset(split=split, batch_size=-1, shuffle_files=False))
        order = np.argsort([int(i.rsplit(b"_", 1)[1]) for i in ds["id"]], kind="stable")
        out.append(datasets_cifar.ArraySplit(
            ds["image"][order], ds["label"][order].astype(np.int32), names))
    return tuple(out)


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", default="", help="TFDS data_dir (default: TFDS's)")
    parser.add_argument("--manual_dir", default="",
                        help=f"folder with {ARCHIVE} (offline); empty: download it")
    args = parser.parse_args(argv)
    info = builder(args.data_dir, args.manual_dir, download=True).info
    print({str(k): v.num_examples for k, v in info.splits.items()})


if __name__ == "__main__":
    main()
