"""``python -m weights_convert``: torchvision weights (or a community CIFAR ResNet
checkpoint) -> a faq_jax converted checkpoint.

Examples::

    python -m weights_convert --arch resnet50 --weights IMAGENET1K_V1 --out ckpt/resnet50 --verify
    python -m weights_convert --arch resnet18 --state-dict resnet18.pth --out ckpt/r18 --verify
    python -m weights_convert --arch cifar_resnet20 --state-dict resnet20-12fca82f.th \
        --out ckpt/cifar_resnet20 --verify --verify-images cifar10-test-jpeg.tar.gz

``--verify`` runs the PyTorch network (eval mode) and the converted Flax model on the same
inputs (``--verify-images``: real images, normalised as recorded; else a seeded random
batch) and fails (nothing written) when the max relative logit error exceeds 1e-4 (1e-5 for
the CIFAR ResNets). The manifest records the input normalisation the weights expect
(``--mean``/``--std``; default ImageNet's). The output is written to a temporary folder
beside ``--out`` and renamed at the end, so a failed run leaves no ``--out`` behind.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import io
import os
import sys
import tarfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from faq_jax import console, converted, lazy_imports, models
from weights_convert import cifar_resnet, mapping

PARITY_TOL = 1e-4
PARITY_TOL_CIFAR = 1e-5  # the CIFAR ResNets are small enough for a tighter check
VERIFY_BATCH = 2
VERIFY_IMAGES = 64  # --verify-images: this many images, spread evenly over the sorted list
VERIFY_CHUNK = 500  # images per forward pass while verifying
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class ConvertError(Exception):
    """A failure the user can act on; printed without a traceback."""


def sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def torch_reference(arch: str, num_classes: int, **kwargs: Any) -> Any:
    """The torch model ``arch`` (random init): torchvision's, or a CIFAR ResNet.

    ResNet-20 (option B) has no torchvision counterpart; it is built from torchvision's
    ResNet parts (``BasicBlock``, 1x1 conv + BN shortcuts) with the same module names as
    faq_jax's. The option-A ``cifar_resnet*`` are :func:`cifar_resnet.reference`.
    """
    if cifar_resnet.is_cifar_resnet(arch):
        return cifar_resnet.reference(arch, num_classes, **kwargs)
    torch = lazy_imports.torch()
    import torchvision

    if arch != "resnet20":
        return torchvision.models.get_model(arch, weights=None, num_classes=num_classes,
                                            **kwargs)
    from torchvision.models import resnet as tv_resnet

    nn = torch.nn

    class CifarResNet(nn.Module):
        def __init__(self, num_classes: int):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.relu = nn.ReLU(inplace=True)
            in_planes = 16
            for stage, planes in enumerate((16, 32, 64)):
                blocks = []
                for i in range(3):
                    stride = 2 if stage > 0 and i == 0 else 1
                    down = None
                    if stride != 1 or in_planes != planes:
                        down = nn.Sequential(tv_resnet.conv1x1(in_planes, planes, stride),
                                             nn.BatchNorm2d(planes))
                    blocks.append(tv_resnet.BasicBlock(in_planes, planes, stride, down))
                    in_planes = planes
                setattr(self, f"layer{stage + 1}", nn.Sequential(*blocks))
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            x = self.relu(self.bn1(self.conv1(x)))
            x = self.layer3(self.layer2(self.layer1(x)))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return CifarResNet(num_classes, **kwargs)


def _unwrap(obj: Any, where: str) -> dict[str, Any]:
    """A plain state dict from what torch.load returned (``{"state_dict": ...}``,
    ``{"model": ...}`` and DataParallel's ``module.`` prefix accepted)."""
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not obj:
        raise ConvertError(f"{where} does not hold a state dict (got {type(obj).__name__})")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


def _load_state_dict(path: str) -> tuple[dict[str, Any], str]:
    torch = lazy_imports.torch()
    if not os.path.isfile(path):
        raise ConvertError(f"state dict file {path!r} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError ...
        first = (str(e).strip().splitlines() or [""])[0]  # torch's messages run to pages
        raise ConvertError(f"cannot read state dict file {path!r} (truncated, corrupt, or not "
                           f"a torch.save file): {type(e).__name__}: {first}") from e
    return _unwrap(obj, f"file {path!r}"), sha256(path)


def _download(arch: str, weights: str) -> tuple[Any, str | None]:
    """torchvision's pretrained model and the sha256 of the file in the torch hub cache."""
    torch = lazy_imports.torch()
    import torchvision

    if arch not in torchvision.models.list_models():
        raise ConvertError(f"torchvision has no pretrained {arch}; use --state-dict FILE")
    try:
        enum = torchvision.models.get_model_weights(arch)
        w = enum[weights]
    except KeyError:
        names = ", ".join(m.name for m in torchvision.models.get_model_weights(arch))
        raise ConvertError(f"unknown --weights {weights!r} for {arch}; torchvision has "
                           f"{names}") from None
    try:
        model = torchvision.models.get_model(arch, weights=w)
    except Exception as e:
        raise ConvertError(
            f"could not download torchvision's {arch} {weights} weights from {w.url} "
            f"({type(e).__name__}: {e}). Offline? Copy the file into "
            f"{os.path.join(torch.hub.get_dir(), 'checkpoints')} or pass "
            "--state-dict FILE.pth") from e
    cached = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(w.url))
    return model, sha256(cached) if os.path.isfile(cached) else None


def _flax_kwargs(arch: str, torch_model: Any) -> dict[str, Any]:
    """Architecture options the Flax model must share with the torch one (inception_v3)."""
    if arch != "inception_v3":
        return {}
    return {k: bool(getattr(torch_model, k)) for k in ("aux_logits", "transform_input")
            if hasattr(torch_model, k)}


def logits_pair(torch_model: Any, variables: Mapping[str, Any], arch: str,
                num_classes: int, *, size: int | None = None, seed: int = 0,
                images: np.ndarray | None = None, **model_kwargs: Any
                ) -> tuple[np.ndarray, np.ndarray]:
    """(torch, flax) eval-mode logits on ``images`` (NHWC float32, normalised) or, if None,
    on a seeded random batch of ``VERIFY_BATCH`` at ``size`` (default: the arch's)."""
    torch = lazy_imports.torch()
    import jax

    if images is None:
        size = size or models.spec(arch).image_size
        x = torch.randn(VERIFY_BATCH, 3, size, size,
                        generator=torch.Generator().manual_seed(seed))
    else:
        x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2), np.float32))
    torch_model.eval()
    module = models.create(arch, num_classes=num_classes, **model_kwargs)
    apply = jax.jit(lambda v, x: module.apply(v, x, train=False))
    refs, outs = [], []
    for i in range(0, len(x), VERIFY_CHUNK):  # bounded memory for many images
        with torch.no_grad():
            r = torch_model(x[i:i + VERIFY_CHUNK])
        refs.append((r[0] if isinstance(r, tuple) else r).numpy())
        outs.append(np.asarray(apply(variables, x[i:i + VERIFY_CHUNK].numpy().transpose(
            0, 2, 3, 1))))
    ref, out = np.concatenate(refs), np.concatenate(outs)
    spread = np.max(np.abs(ref - ref.mean(0))) / np.max(np.abs(ref))
    if spread < 1e-3:  # e.g. untrained weights whose features vanish: logits = fc bias
        print(f"warning: {arch}'s logits barely depend on the input (spread {spread:.2g}); "
              "the parity check says little about these weights", file=sys.stderr)
    return ref, out


def rel_error(flax_logits: np.ndarray, torch_logits: np.ndarray) -> float:
    """max|flax - torch| / max|torch|."""
    return float(np.max(np.abs(flax_logits - torch_logits)) / np.max(np.abs(torch_logits)))


def _image_files(path: str) -> list[tuple[str, Any]]:
    """(name, opener) of every JPEG/PNG under a folder or in a .tar / .tar.gz, by name."""
    if os.path.isdir(path):
        found = sorted(os.path.join(d, f) for d, _, files in os.walk(path) for f in files
                       if f.lower().endswith(IMAGE_SUFFIXES))
        return [(f, lambda f=f: open(f, "rb")) for f in found]
    if os.path.isfile(path) and tarfile.is_tarfile(path):
        with tarfile.open(path) as tar:  # read whole: a stream cannot seek back
            blobs = {m.name: tar.extractfile(m).read() for m in tar.getmembers()
                     if m.isfile() and m.name.lower().endswith(IMAGE_SUFFIXES)}
        return [(n, lambda b=blobs[n]: io.BytesIO(b)) for n in sorted(blobs)]
    raise ConvertError(f"--verify-images {path!r}: not a folder or a .tar/.tar.gz archive "
                       "of images")


def load_images(path: str, count: int, size: int, mean: Sequence[float],
                std: Sequence[float]) -> tuple[np.ndarray, list[str]]:
    """``count`` images spread evenly over the sorted JPEG/PNG files of a folder or archive,
    as NHWC float32 ``(x / 255 - mean) / std`` at ``size`` x ``size`` (PIL bilinear resize
    when they differ; parity needs identical inputs, not the evaluation crop)."""
    from PIL import Image  # noqa: PLC0415

    files = _image_files(path)
    if not files:
        raise ConvertError(f"--verify-images {path!r}: no .jpg/.jpeg/.png files")
    picks = sorted(set(np.linspace(0, len(files) - 1, min(count, len(files))).astype(int)))
    images, names = [], []
    for i in picks:
        name, opener = files[i]
        try:
            with opener() as f, Image.open(f) as im:
                im = im.convert("RGB")
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                images.append(np.asarray(im, np.float32) / 255.0)
        except OSError as e:
            raise ConvertError(f"--verify-images: cannot decode {name!r}: {e}") from e
        names.append(name)
    x = (np.stack(images) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.astype(np.float32), names


def _normalization(args: argparse.Namespace) -> converted.Normalization | None:
    """--mean/--std, else the arch's default (ImageNet's; None for resnet20)."""
    if (args.mean is None) != (args.std is None):
        raise ConvertError("--mean and --std go together (3 values each, RGB)")
    if args.mean is None:
        return converted.default_normalization(args.arch)
    try:
        return converted.check_normalization(args.mean, args.std)
    except ValueError as e:
        raise ConvertError(f"--mean/--std: {e}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m weights_convert", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", required=True, choices=sorted(models.ARCHS))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--weights", help="torchvision weights name, e.g. IMAGENET1K_V1 (online)")
    src.add_argument("--state-dict", help="a torch.save'd state dict (.pth), e.g. offline")
    p.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    p.add_argument("--verify", action="store_true",
                   help=f"check logits against torch; fail if relative error > {PARITY_TOL} "
                        f"({PARITY_TOL_CIFAR} for cifar_resnet*)")
    p.add_argument("--verify-images", default=None, metavar="PATH",
                   help="with --verify: compare on real images (a folder or .tar/.tar.gz of "
                        "JPEG/PNG files, normalised with --mean/--std) instead of random "
                        "inputs")
    p.add_argument("--verify-count", type=int, default=VERIFY_IMAGES, metavar="N",
                   help=f"images --verify-images uses, spread over the sorted files "
                        f"(default {VERIFY_IMAGES})")
    p.add_argument("--mean", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help="input normalisation the weights were trained with, recorded in the "
                        "manifest: (x - mean) / std on [0, 1] RGB (default: ImageNet's "
                        f"{converted.IMAGENET_MEAN}; none for resnet20)")
    p.add_argument("--std", type=float, nargs=3, default=None, metavar=("R", "G", "B"),
                   help=f"see --mean (default: ImageNet's {converted.IMAGENET_STD})")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classifier width (default: read off the weights)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")
    p.add_argument("--verbosity", type=int, default=None,
                   help="0: INFO logs and the traceback of an error (default: quiet)")
    return p


def run(args: argparse.Namespace) -> Path:
    """Converts (and verifies) as ``args`` say; returns the written folder."""
    import torchvision

    out = Path(args.out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.force:
            raise ConvertError(f"--out {str(out)!r} exists and is not empty (pass --force to "
                               "replace a converted checkpoint there)")
        why = converted.not_replaceable(out)
        if why:
            raise ConvertError(f"--force refuses to replace {str(out)!r}: {why}. It only "
                               "replaces a folder this converter wrote; choose a new --out")
    if args.verify_images and not args.verify:
        raise ConvertError("--verify-images needs --verify")
    norm = _normalization(args)
    cifar = cifar_resnet.is_cifar_resnet(args.arch)
    torch_model = None
    if args.weights:
        torch_model, digest = _download(args.arch, args.weights)
        state_dict, source = torch_model.state_dict(), args.weights
    else:
        state_dict, digest = _load_state_dict(args.state_dict)
        source = str(Path(args.state_dict).absolute())
    kwargs = _flax_kwargs(args.arch, torch_model) if torch_model is not None else {}
    if args.arch == "inception_v3" and torch_model is None:
        # torchvision switches transform_input on whenever it loads pretrained weights.
        kwargs = {"aux_logits": any(k.startswith("AuxLogits.") for k in state_dict),
                  "transform_input": True}
    try:
        if cifar:  # the community checkpoints' format: one explicit key map
            variables = cifar_resnet.convert(state_dict, args.arch,
                                             num_classes=args.num_classes)
        else:
            variables = mapping.convert(state_dict, args.arch,
                                           num_classes=args.num_classes, **kwargs)
    except ValueError as e:
        raise ConvertError(f"{args.state_dict or args.weights}: {e}") from e
    num_classes = int(args.num_classes or mapping.num_classes(variables, args.arch))
    error = inputs = None
    size = models.spec(args.arch).image_size
    tol = PARITY_TOL_CIFAR if cifar else PARITY_TOL
    if args.verify:
        images = None
        inputs = f"{VERIFY_BATCH} seeded random inputs"
        if args.verify_images:
            if norm is None:
                raise ConvertError(f"--verify-images: {args.arch} has no default input "
                                   "normalisation; pass --mean and --std")
            images, _ = load_images(args.verify_images, args.verify_count, size, *norm)
            inputs = f"{len(images)} images from {os.path.abspath(args.verify_images)}"
        if torch_model is None:
            torch_model = torch_reference(args.arch, num_classes, **kwargs)
            torch_model.load_state_dict(state_dict)
        ref, got = logits_pair(torch_model, variables, args.arch, num_classes, images=images,
                               **kwargs)
        error = rel_error(got, ref)
        agree = int(np.sum(np.argmax(got, -1) == np.argmax(ref, -1)))
        print(f"{args.arch}: max relative logit error vs torch = {error:.3g} on {inputs} "
              f"(same top-1 on {agree}/{len(ref)})")
        if not error <= tol:
            raise ConvertError(f"parity check failed: max relative logit error {error:.3g} > "
                               f"{tol}; nothing written")
    torch = lazy_imports.torch()
    manifest = {
        "arch": args.arch,
        "num_classes": num_classes,
        "model_kwargs": kwargs,
        "source": source,
        "source_sha256": digest,
        "input_normalization": None if norm is None else {"mean": list(norm[0]),
                                                           "std": list(norm[1])},
        "torchvision_version": torchvision.__version__,
        "torch_version": torch.__version__,
        "parity_max_rel_error": error,
        "parity_image_size": size if args.verify else None,
        "parity_inputs": inputs,
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    return converted.save(out, variables, manifest, overwrite=args.force)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (0 on success; bad input: one line
    ``error: ...`` and 1, see ``faq_jax.console``)."""
    args = _parser().parse_args(argv)
    console.configure(args.verbosity)
    try:
        # ImportError: the convert extra (torch, torchvision) is missing.
        with console.exit_on_error(extra=(ConvertError, ImportError)):
            out = run(args)
    except SystemExit as e:
        return int(e.code or 0)
    print(f"wrote {out}")
    return 0
