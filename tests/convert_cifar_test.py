"""Option-A CIFAR ResNets: the PyTorch reference, the community checkpoint converter, and its
clear failures.

- parity of the float Flax networks with ``weights_convert.cifar_resnet.reference`` (random
  weights, non-trivial BN) for every depth, eval and train mode (logits and running stats);
- the published ResNet-20 checkpoint (``../shared/data/pretrained/cifar_resnet``, beside the
  repository) converted by the CLI and checked on real CIFAR-10 test JPEGs; ResNet-56 too;
- bad input (another depth, a truncated file, a torchvision-style option-B state dict): one
  line on stderr naming the difference, exit status 1, nothing at ``--out``;
- the recorded input normalisation, and converted folders from before it existed.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest

from faq_jax import converted, models, workdir
from faq_jax.config import defaults

torch = pytest.importorskip("torch")

from convert_parity_test import randomize_bn, rel_err  # noqa: E402 - tests/ is on sys.path

from weights_convert import cifar_resnet, cli  # noqa: E402

SHARED = Path(defaults.shared_cifar10_archive(__file__)).parent
PRETRAINED = SHARED / "pretrained" / "cifar_resnet"
TEST_JPEGS = SHARED / "cifar10-test-jpeg.tar.gz"
DEPTHS = (20, 32, 44, 56, 110)


def _need_shared(*paths: Path) -> None:
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        pytest.skip(f"shared data beside the repository is absent: {', '.join(missing)}")


def _nhwc(x):
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize("depth", DEPTHS)
def test_flax_matches_the_pytorch_reference(depth):
    """Random weights and BN statistics; eval logits, train logits and running stats."""
    arch = f"cifar_resnet{depth}"
    torch.manual_seed(depth)
    tmodel = randomize_bn(cifar_resnet.reference(arch), depth)
    variables = cifar_resnet.convert(tmodel.state_dict(), arch)
    n_params = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(variables["params"]))
    assert n_params == sum(p.numel() for p in tmodel.parameters())
    module = models.create(arch, num_classes=10)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(depth + 1))
    with torch.no_grad():
        ref_eval = tmodel.eval()(x).numpy()
        ref_train = tmodel.train()(x).numpy()
    # The Flax side runs op by op: one forward of a deep net is cheaper than compiling it.
    out_eval = module.apply(variables, _nhwc(x), train=False)
    out_train, updates = module.apply(variables, _nhwc(x), train=True, mutable=["batch_stats"])
    ref_stats = cifar_resnet.convert(tmodel.state_dict(), arch)["batch_stats"]
    errors = {"eval": rel_err(out_eval, ref_eval), "train": rel_err(out_train, ref_train),
              "running_stats": max(jax.tree.leaves(
                  jax.tree.map(rel_err, updates["batch_stats"], ref_stats)))}
    print(arch, errors)
    assert errors["eval"] <= 1e-5 and errors["train"] <= 1e-4 and errors["running_stats"] <= 1e-4


def test_key_map_covers_every_variable_both_ways():
    for depth in DEPTHS:
        arch = f"cifar_resnet{depth}"
        tmodel = cifar_resnet.reference(arch)
        keys = [k for k in tmodel.state_dict() if not cifar_resnet.DROPPED.fullmatch(k)]
        mapped = {cifar_resnet.flax_name(k) for k in keys}
        from weights_convert import mapping  # noqa: PLC0415

        assert mapped == set(mapping.expected_shapes(arch, 10, ())), arch
    assert cifar_resnet.flax_name("layer3.17.bn2.running_var") == \
        "batch_stats/layer3_17/bn2/var"
    assert cifar_resnet.flax_name("linear.weight") == "params/linear/kernel"
    assert cifar_resnet.flax_name("fc.weight") is None
    assert cifar_resnet.flax_name("layer2.0.downsample.0.weight") is None


def _akamaster_file(path: Path, depth: int, seed: int = 0) -> Path:
    """A random reference network saved as the community checkpoints are: a dict with
    ``state_dict`` (DataParallel's ``module.`` prefix) and ``best_prec1``."""
    torch.manual_seed(seed)
    sd = randomize_bn(cifar_resnet.reference(f"cifar_resnet{depth}"), seed).state_dict()
    torch.save({"best_prec1": 90.0, "state_dict": {f"module.{k}": v for k, v in sd.items()}},
               path)
    return path


def _fails_cleanly(capsys, tmp_path: Path, argv: list[str]) -> str:
    """Runs the CLI expecting failure; returns its one-line message."""
    out = tmp_path / "out"
    assert cli.main([*argv, "--out", str(out), "--verify"]) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if "out" in p.name]
    return err


def test_bad_checkpoints_fail_in_one_line_and_write_nothing(tmp_path, capsys):
    r56 = _akamaster_file(tmp_path / "resnet56.th", 56)
    err = _fails_cleanly(capsys, tmp_path, ["--arch", "cifar_resnet20", "--state-dict",
                                            str(r56)])
    assert "not a cifar_resnet20 state dict" in err and "ResNet-56" in err
    assert "--arch cifar_resnet56" in err and "'layer1.3.conv1.weight'" in err

    err = _fails_cleanly(capsys, tmp_path, ["--arch", "cifar_resnet110", "--state-dict",
                                            str(r56)])
    assert "ResNet-56" in err and "missing keys (270)" in err

    bad = tmp_path / "truncated.th"
    bad.write_bytes(r56.read_bytes()[: r56.stat().st_size // 2])
    err = _fails_cleanly(capsys, tmp_path, ["--arch", "cifar_resnet56", "--state-dict",
                                            str(bad)])
    assert "cannot read state dict file" in err and str(bad) in err

    # A torchvision-style (option-B) CIFAR ResNet-20: downsample convs and 'fc'.
    option_b = tmp_path / "resnet20_option_b.pth"
    torch.save(cli.torch_reference("resnet20", 10).state_dict(), option_b)
    err = _fails_cleanly(capsys, tmp_path, ["--arch", "cifar_resnet20", "--state-dict",
                                            str(option_b)])
    assert "option-B" in err and "'layer2.0.downsample.0.weight'" in err
    assert "'fc.weight'" in err and "--arch resnet20" in err
    assert "missing keys (2): 'linear.bias', 'linear.weight'" in err

    err = _fails_cleanly(capsys, tmp_path, ["--arch", "cifar_resnet20", "--state-dict",
                                            str(r56), "--mean", "0.5", "0.5", "0.5"])
    assert "--mean and --std go together" in err


def test_round_trip_records_the_normalisation(tmp_path, capsys):
    path = _akamaster_file(tmp_path / "resnet20.th", 20, seed=3)
    out = tmp_path / "r20"
    assert cli.main(["--arch", "cifar_resnet20", "--state-dict", str(path), "--out", str(out),
                     "--verify"]) == 0
    assert "on 2 seeded random inputs" in capsys.readouterr().out
    manifest = converted.read_manifest(out)
    assert manifest["num_classes"] == 10 and manifest["parity_max_rel_error"] <= 1e-5
    assert converted.input_normalization(out) == (converted.IMAGENET_MEAN,
                                                   converted.IMAGENET_STD)
    assert converted.normalization_mismatch(out, *converted.default_normalization(
        "cifar_resnet20")) is None
    assert "--config.data.mean" in converted.normalization_mismatch(
        out, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert cli.main(["--arch", "cifar_resnet20", "--state-dict", str(path), "--out", str(out),
                     "--force", "--mean", "0.5", "0.4", "0.3", "--std", "0.2", "0.2", "0.25"]
                    ) == 0
    assert converted.input_normalization(out) == ((0.5, 0.4, 0.3), (0.2, 0.2, 0.25))
    variables = converted.load(out, arch="cifar_resnet20")
    assert variables["params"]["linear"]["kernel"].shape == (64, 10)


def test_folders_from_before_the_normalisation_field_still_load(tmp_path):
    """format_version 1 manifests without ``input_normalization`` (older converters)."""
    variables = {"params": {"fc": {"kernel": np.ones((3, 2), np.float32)}},
                 "batch_stats": {}}
    for arch, expected in (("resnet18", (converted.IMAGENET_MEAN, converted.IMAGENET_STD)),
                           ("resnet20", None)):
        out = converted.save(tmp_path / arch, variables, {"arch": arch, "num_classes": 2})
        manifest = json.loads((out / "manifest.json").read_text())
        manifest.pop("input_normalization", None)
        (out / "manifest.json").write_text(json.dumps(manifest))  # as an old converter wrote
        np.testing.assert_array_equal(converted.load(out, arch=arch)["params"]["fc"]["kernel"],
                                      np.ones((3, 2)))
        assert converted.input_normalization(out) == expected
        mismatch = converted.normalization_mismatch(out, (0.5,) * 3, (0.5,) * 3)
        assert (mismatch is None) == (expected is None)  # unknown: nothing to compare
    bad = json.loads((tmp_path / "resnet18" / "manifest.json").read_text())
    bad["input_normalization"] = {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}
    (tmp_path / "resnet18" / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(workdir.CheckpointError, match="bad input_normalization"):
        converted.load(tmp_path / "resnet18")


def _convert_published(tmp_path, capsys, depth: int, count: int) -> Path:
    src = PRETRAINED / {20: "resnet20-12fca82f.th", 56: "resnet56-4bfd9763.th"}[depth]
    _need_shared(src, TEST_JPEGS)
    out = tmp_path / f"cifar_resnet{depth}"
    assert cli.main(["--arch", f"cifar_resnet{depth}", "--state-dict", str(src), "--out",
                     str(out), "--verify", "--verify-images", str(TEST_JPEGS),
                     "--verify-count", str(count)]) == 0
    printed = capsys.readouterr().out
    assert f"on {count} images from {TEST_JPEGS}" in printed, printed
    manifest = converted.read_manifest(out)
    assert manifest["source_sha256"].startswith(src.name.split("-")[1].split(".")[0])
    assert manifest["parity_max_rel_error"] <= 1e-5
    assert manifest["parity_inputs"] == f"{count} images from {TEST_JPEGS}"
    assert converted.input_normalization(out) == (converted.IMAGENET_MEAN,
                                                   converted.IMAGENET_STD)
    return out


def _accuracy_on_test_jpegs(out: Path, count: int) -> float:
    """Top-1 of the converted Flax network on ``count`` test JPEGs spread over the classes."""
    mean, std = converted.input_normalization(out)
    x, names = cli.load_images(str(TEST_JPEGS), count, 32, mean, std)
    classes = sorted({n.split("/")[-2] for n in names})  # CIFAR-10's order is alphabetical
    labels = np.array([classes.index(n.split("/")[-2]) for n in names])
    arch = converted.read_manifest(out)["arch"]
    logits = models.create(arch, num_classes=10).apply(converted.load(out, arch=arch), x)
    return float(np.mean(np.argmax(np.asarray(logits), -1) == labels))


def test_published_resnet20_converts_and_classifies(tmp_path, capsys):
    out = _convert_published(tmp_path, capsys, 20, 40)
    assert _accuracy_on_test_jpegs(out, 40) >= 0.7  # 81.0% on all 10,000 (lossy JPEGs)


def test_published_resnet56_converts_and_classifies(tmp_path, capsys):
    out = _convert_published(tmp_path, capsys, 56, 100)
    assert _accuracy_on_test_jpegs(out, 100) >= 0.7  # 83.2% on all 10,000 (lossy JPEGs)
