"""One-time dataset preparation: ``python -m faq_jax.data SOURCE [flags]``.

- ``imagenet2012 --manual_dir DIR [--data_dir DIR]``: builds TFDS ``imagenet2012`` from the
  two ILSVRC2012 archives (:func:`faq_jax.data.imagenet.main`);
- ``cifar10 [--data_dir DIR] [--manual_dir DIR]``: prepares TFDS ``cifar10``, downloading
  it or offline from ``cifar-10-binary.tar.gz`` (:func:`faq_jax.data.cifar10.main`).
"""

from __future__ import annotations

import sys

from faq_jax.data import cifar10, imagenet

SOURCES = {"imagenet2012": imagenet.main, "cifar10": cifar10.main}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in SOURCES:
        raise SystemExit(f"usage: python -m faq_jax.data {{{','.join(SOURCES)}}} [flags] "
                         "(--help after the source lists them)")
    SOURCES[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
