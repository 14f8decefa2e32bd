"""Training batches/s of the two CIFAR-10 loaders on the JPEG archive: ``loader="tf"``
(tf.data) and ``loader="numpy"`` (decoded once into memory, NumPy crop and flip), side by side
in one process; the time to the first batch (decoding, for numpy) is reported apart.

    python benchmarks/bench_cifar_loaders.py [--batches 200] [--batch 128]
"""

from __future__ import annotations

import argparse
import itertools
import time

from faq_jax.config import defaults
from faq_jax.data import pipeline


def measure(loader: str, batches: int, batch: int) -> tuple[float, float]:
    """(seconds to the first batch, batches/s over the next ``batches``)."""
    c = defaults.cifar10_base(4, 4, defaults.shared_cifar10_archive(__file__))
    c.data.loader = loader
    c.data.val_per_class = 0
    c.data.eval_split = "test"
    c.data.test_archive = defaults.shared_cifar10_test_archive(__file__)
    t0 = time.perf_counter()
    stream = pipeline.train_batches(c, local_batch_size=batch)
    next(stream)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in itertools.islice(stream, batches):
        pass
    return first, batches / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--batch", type=int, default=128)
    args = ap.parse_args()
    print(f"| loader | first batch (s) | batches/s (batch {args.batch}) | images/s |")
    print("|---|---|---|---|")
    for loader in ("numpy", "tf"):
        first, rate = measure(loader, args.batches, args.batch)
        print(f"| {loader} | {first:.1f} | {rate:.1f} | {rate * args.batch:.0f} |", flush=True)


if __name__ == "__main__":
    main()
