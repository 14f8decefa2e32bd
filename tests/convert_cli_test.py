"""``python -m weights_convert`` and ``faq_jax.converted``: round trip and clear failures.

The CLI runs in-process (``cli.main(argv)``) to share one jax/torch start-up; one
subprocess smoke test checks the ``-m`` entry point. The ``pretrained`` error tests need no
torch.
"""

import json
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from faq_jax import converted, models


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cli(torch):
    from weights_convert import cli

    return cli


@pytest.fixture(scope="module")
def r18_file(torch, tmp_path_factory):
    """A random resnet18 state dict (non-trivial BN) saved with torch.save; and the model."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    path = tmp_path_factory.mktemp("pth") / "resnet18_random.pth"
    torch.save(model.state_dict(), path)
    return path, model.eval()


def _leftovers(parent: Path, name: str) -> list[str]:
    """Anything save() might have left beside ``name`` (the output or its temp folders)."""
    return [p.name for p in parent.iterdir() if name in p.name]


def test_round_trip_with_verify(cli, torch, r18_file, tmp_path, capsys):
    path, model = r18_file
    out = tmp_path / "r18"
    assert cli.main(["--arch", "resnet18", "--state-dict", str(path), "--out", str(out),
                     "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "max relative logit error" in printed
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "variables"]
    assert _leftovers(tmp_path, "r18") == ["r18"]  # no temp folder left behind
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["arch"] == "resnet18" and manifest["num_classes"] == 1000
    assert manifest["format_version"] == converted.FORMAT_VERSION
    assert manifest["source"] == str(path.absolute())
    assert manifest["source_sha256"] == cli.sha256(path)
    assert 0 <= manifest["parity_max_rel_error"] <= 1e-4
    assert manifest["torchvision_version"] and manifest["created"]

    variables = converted.load(out, arch="resnet18")
    assert set(variables) == {"params", "batch_stats"}
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(x).numpy()
    logits = jax.jit(models.create("resnet18").apply)(variables, x.numpy().transpose(0, 2, 3, 1))
    assert np.max(np.abs(np.asarray(logits) - ref)) / np.max(np.abs(ref)) <= 1e-4

    with pytest.raises(ValueError, match="holds resnet18 weights but config.arch is resnet34"):
        converted.load(out, arch="resnet34")
    # An existing non-empty --out is refused unless --force.
    assert cli.main(["--arch", "resnet18", "--state-dict", str(path), "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert cli.main(["--arch", "resnet18", "--state-dict", str(path), "--out", str(out),
                     "--force"]) == 0
    assert json.loads((out / "manifest.json").read_text())["parity_max_rel_error"] is None
    assert _leftovers(tmp_path, "r18") == ["r18"]


def test_wrong_arch_fails_and_writes_nothing(cli, torch, tmp_path, capsys):
    import torchvision

    path = tmp_path / "resnet34.pth"
    torch.save(torchvision.models.resnet34().state_dict(), path)
    out = tmp_path / "out"
    assert cli.main(["--arch", "resnet18", "--state-dict", str(path), "--out", str(out),
                     "--verify"]) == 1
    err = capsys.readouterr().err
    assert "does not fit resnet18" in err and "layer1.2.conv1.weight" in err
    assert str(path) in err
    assert _leftovers(tmp_path, "out") == []


def test_truncated_file_fails_and_writes_nothing(cli, r18_file, tmp_path, capsys):
    path, _ = r18_file
    bad = tmp_path / "truncated.pth"
    data = path.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    assert cli.main(["--arch", "resnet18", "--state-dict", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "cannot read state dict file" in err and str(bad) in err
    assert _leftovers(tmp_path, "out") == []
    assert cli.main(["--arch", "resnet18", "--state-dict", str(tmp_path / "nope.pth"),
                     "--out", str(out)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_unknown_weights_name_is_clear(cli, tmp_path, capsys):
    out = tmp_path / "out"
    assert cli.main(["--arch", "resnet18", "--weights", "NOPE", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "unknown --weights 'NOPE'" in err and "IMAGENET1K_V1" in err
    assert cli.main(["--arch", "resnet20", "--weights", "IMAGENET1K_V1", "--out",
                     str(out)]) == 1
    assert "--state-dict" in capsys.readouterr().err
    assert not out.exists()


def test_module_entry_point(torch):
    res = subprocess.run([sys.executable, "-m", "weights_convert", "--help"],
                         capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent)
    assert res.returncode == 0, res.stderr
    assert "--state-dict" in res.stdout and "--verify" in res.stdout


def _tiny_variables():
    return {"params": {"fc": {"kernel": np.ones((3, 2), np.float32)}},
            "batch_stats": {"bn": {"mean": np.zeros(3, np.float32)}}}


def test_pretrained_save_load_and_errors(tmp_path):
    out = converted.save(tmp_path / "ck", _tiny_variables(),
                          {"arch": "resnet18", "num_classes": 2})
    got = converted.load(out)
    np.testing.assert_array_equal(got["params"]["fc"]["kernel"], np.ones((3, 2)))
    with pytest.raises(FileExistsError):
        converted.save(out, _tiny_variables(), {"arch": "resnet18", "num_classes": 2})

    with pytest.raises(ValueError, match="does not exist"):
        converted.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a faq_jax converted checkpoint: .* no "
                                         "manifest.json"):
        converted.load(tmp_path / "empty")
    manifest = out / "manifest.json"
    good = manifest.read_text()
    manifest.write_text(good[: len(good) // 2])
    with pytest.raises(ValueError, match="not a faq_jax converted checkpoint: .*corrupt"):
        converted.load(out)
    manifest.write_text(json.dumps({**json.loads(good), "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99"):
        converted.load(out)
    manifest.write_text(good)
    with pytest.raises(ValueError, match="holds resnet18 weights but config.arch is vgg16_bn"):
        converted.load(out, arch="vgg16_bn")
    assert converted.read_manifest(out)["num_classes"] == 2


def test_force_only_replaces_a_converted_checkpoint(cli, torch, tmp_path, capsys, monkeypatch):
    """--force never deletes what the converter did not write: a foreign folder, the current
    directory, or a converted checkpoint somebody put other files into."""
    import torchvision

    src = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    before = sorted(p.name for p in tmp_path.iterdir())
    for out in (tmp_path, "."):  # the folder holding the source; the current directory
        monkeypatch.chdir(tmp_path)
        assert cli.main(["--arch", "resnet18", "--state-dict", str(src), "--out", str(out),
                         "--force"]) == 1
        assert "only replaces a folder this converter wrote" in capsys.readouterr().err
        assert sorted(p.name for p in tmp_path.iterdir()) == before
    sibling = tmp_path / "ckpts"
    (sibling / "other").mkdir(parents=True)
    assert cli.main(["--arch", "resnet18", "--state-dict", str(src), "--out",
                     str(sibling), "--force"]) == 1
    assert (sibling / "other").is_dir()
    capsys.readouterr()
    conv = tmp_path / "conv"
    assert cli.main(["--arch", "resnet18", "--state-dict", str(src), "--out", str(conv)]) == 0
    (conv / "notes.txt").write_text("mine")
    assert cli.main(["--arch", "resnet18", "--state-dict", str(src), "--out", str(conv),
                     "--force"]) == 1
    assert "did not write" in capsys.readouterr().err and (conv / "notes.txt").exists()
    (conv / "notes.txt").unlink()
    assert cli.main(["--arch", "resnet18", "--state-dict", str(src), "--out", str(conv),
                     "--force"]) == 0
