"""Images/s per CPU core of ImageNet *training* preprocessing: faq_jax (tf.data) vs torchvision.

Both decode the same full-size JPEGs and apply RandomResizedCrop(224) + horizontal flip +
ToTensor/Normalize, on one core each: the process is pinned to one CPU, tf.data runs with a
private thread pool of 1 and num_parallel_calls=1, torch with set_num_threads(1) and a
DataLoader with num_workers=0.

    python benchmarks/bench_input.py [--images 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch  # Before TensorFlow: torchvision after TensorFlow can segfault.
import torchvision  # noqa: F401  (loads triton before TensorFlow)
from PIL import Image
from torchvision import transforms

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def write_photos(folder: str, count: int, size=(500, 375)) -> list[str]:
    """Smooth random colour fields plus mild noise: JPEG sizes like photographs (~50 KB)."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, (6 + i % 7, 8 + i % 5, 3), dtype=np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize(size, Image.BICUBIC), np.float32)
        image += rng.normal(0, 6, image.shape)
        path = os.path.join(folder, f"{i:04d}.jpg")
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def make_torchvision(paths: list[str], batch: int):
    """A timed pass of a torchvision DataLoader over ``paths``; returns images/s."""
    torch.set_num_threads(1)
    transform = transforms.Compose([
        transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])  # fmt: skip

    class Files(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return len(paths)

        def __getitem__(self, i: int):
            with open(paths[i], "rb") as f:
                return transform(Image.open(f).convert("RGB")), 0

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, num_workers=0, shuffle=True)

    def run() -> float:
        start = time.process_time()
        for images, _ in loader:
            assert images.shape[1:] == (3, 224, 224)
        return len(paths) / (time.process_time() - start)

    return run


def make_faq_jax(paths: list[str], batch: int):
    """A timed pass of the faq_jax tf.data preprocessing over ``paths``; returns images/s."""
    from faq_jax.data import preprocess

    tf = preprocess.tf

    def example(path, seed):
        return preprocess.train_imagenet(tf.io.read_file(path), seed, 224)

    def normalize(images):
        return preprocess.normalize(images, MEAN, STD)

    seeds = np.stack([np.zeros(len(paths)), np.arange(len(paths))], 1).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((paths, seeds))
    ds = ds.map(example, num_parallel_calls=1).batch(batch).map(normalize, num_parallel_calls=1)
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    options.autotune.enabled = False
    ds = ds.with_options(options)

    def run() -> float:
        start = time.process_time()
        for images in ds:
            assert images.shape[1:] == (224, 224, 3)
        return len(paths) / (time.process_time() - start)

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # One core for both.
    with tempfile.TemporaryDirectory() as folder:
        paths = write_photos(folder, args.images)
        kb = np.mean([os.path.getsize(p) for p in paths]) / 1024
        print(f"{len(paths)} JPEGs 500x375, mean {kb:.0f} KB; 1 core, batch {args.batch}")
        runs = {"torchvision": make_torchvision(paths, args.batch),
                "faq_jax": make_faq_jax(paths, args.batch)}  # fmt: skip
        rates = {name: [] for name in runs}
        for _ in range(args.repeats + 1):  # Interleaved, so load changes hit both alike.
            for name, run in runs.items():
                rates[name].append(run())
        # The first round is a warm-up (tracing, page cache); report medians of the rest.
        for name, values in rates.items():
            print(f"{name:12s} rounds: " + " ".join(f"{v:6.1f}" for v in values[1:]))
        torch_rate, faq_rate = (float(np.median(rates[n][1:])) for n in runs)
    print(f"torchvision DataLoader (PIL): {torch_rate:7.1f} images/s/core (median)")
    print(f"faq_jax tf.data           : {faq_rate:7.1f} images/s/core (median)")
    print(f"ratio faq_jax/torchvision : {faq_rate / torch_rate:.2f}x")


if __name__ == "__main__":
    main()
