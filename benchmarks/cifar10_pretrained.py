"""FAQ on networks somebody else trained: He et al.'s CIFAR ResNet-20/56 (FAQ.md section 8).

Starts from the published PyTorch checkpoints in ``../shared/data/pretrained/cifar_resnet``
(trained on the lossless CIFAR-10 with ImageNet mean/std), converts them with
``python -m weights_convert``, and reports every number on all 10,000 images of the CIFAR-10
JPEG test split. Every schedule below was fixed before any result was seen; every row is the
final checkpoint of its run. Runs, in order (``--runs`` picks some):

- ``fp32_as_is``: the converted network, evaluated.
- ``fp32_adapted``: fp32 on all 50,000 JPEG training images, 3 epochs, batch 128, SGD
  momentum 0.9, wd 1e-4, lr 0.01 cosine to 0 (per step): the baseline of every quantized run.
- ``w8a8``: calibrate, 1 epoch at lr 1e-4 constant (the paper's 8-bit recipe).
- ``w4a4``: calibrate, then ``EPOCHS`` = 10 epochs with lr_t = 0.0015 (1e-6/0.0015)^(t/T) per
  optimizer step (the paper's 110-epoch exponential decay compressed into T steps; it anneals
  to 1e-6 whatever the epoch count). First conv, classifier, last ReLU and the classifier's
  input stay 8-bit (paper rules).
- ResNet-20 only, same 10 epochs and schedule: ``w4a4_nocalib`` (no calibration:
  y_max = 2^(b/2) - 1), ``w4a4_bnfloat`` (BatchNorm constants in float), ``w4a4_random``
  (random init, no calibration, lr 0.1 -> 1e-6 with the same per-step decay: the paper's
  from-scratch 0.1 x 0.901 per epoch compressed likewise), ``w3a3`` and ``w2a2`` (weight clip
  k = 3.25 and 2.04: see ``CLIP_K``), and ``noise_w{8,4,2}`` (Fig. 1: the first 200 steps
  of the W4A4 schedule, lr 1.5e-3 falling to 1.03e-3, the same at every width, with the
  gradient-noise measure on).

- ResNet-20, LSQ beside FAQ (``quant.method="lsq"``, Esser et al., ICLR 2020):
  ``lsq_w4a4``, ``lsq_w3a3``, ``lsq_w2a2`` from the same ``fp32_adapted`` weights, on the same
  data for the same ``EPOCHS`` = 10 epochs at batch 128 as ``w4a4``/``w3a3``/``w2a2``, the
  same 8-bit first/last layers, BatchNorm constants and input quantizer, each method with its
  paper's schedule. LSQ: SGD momentum 0.9, lr 0.01 with cosine decay to 0 per step (the paper:
  0.01 for its quantized networks, cosine decay without restarts), weight decay 1e-4 / 0.5e-4 /
  0.25e-4 at 4 / 3 / 2 bits (the paper lowers it with the precision; these are the issue's
  reading of its values), none on the steps; steps started from the weights and the first
  calibration batch. The steps are learned as powers of two (``quant.lsq_pow2=True``): both
  methods then produce fixed-point networks, so the comparison is of how the steps are chosen
  at the same hardware constraint, and the LSQ networks go through the same integer export
  check. The paper's unconstrained steps are opt-in runs (``--runs lsq_w4a4_float,...``, same
  recipe, ``lsq_pow2=False``, no integer export); ResNet-56 takes ``--runs lsq_w4a4`` (its FAQ
  partner ``w4a4`` is a core run) when the budget allows.
- Opt-in, for a GPU: ``w4a4_110ep``, the ``w4a4`` run at the paper's full length (110 epochs,
  the same per-step decay from 0.0015 to 1e-6; 42,900 steps). On a machine without
  TensorFlow add ``--loader numpy``: the test images are the same bit for bit, only the
  training crops and flips are drawn by NumPy (``faq_jax.data.numpy_loader``). ``--shared``
  points at the archives and checkpoints when they are not in ``../shared/data``.

Each quantized run is compared with ``fp32_adapted`` on the same 10,000 images (difference,
paired 95% interval, McNemar's exact p: :mod:`faq_jax.paired`), and each LSQ run with the FAQ
run of its width on the same images. The W8A8/W4A4 networks (and the power-of-two LSQ ones)
are exported to integers and run: the NumPy executor (ResNet-20) or the integer ONNX model
(ResNet-56) must predict the float64 simulation's class on every test image.

One command per network; it resumes (finished runs are skipped, unfinished ones continue from
their last checkpoint), so it can be stopped and restarted at will::

    python benchmarks/cifar10_pretrained.py --net resnet20 --workdir ~/.cache/faq_jax/study
    python benchmarks/cifar10_pretrained.py --net resnet56 --workdir ~/.cache/faq_jax/study

Results: per run, ``<workdir>/<net>/<run>/record.json`` (top-1, CPU time, the integer
check, the run's summary) and ``predictions.npz`` (the predicted class of every test image;
not for the noise runs, which measure Fig. 1 only), and the Markdown table printed at the
end (``--report`` prints it without running anything; ``--plots docs`` redraws Fig. 1 and
Fig. 2 from the ResNet-20 runs; ``--pair A B`` compares any two finished runs on the same
images, e.g. a run kept from an earlier commit against its rerun). CPU time of every run is
recorded (process CPU seconds, all threads, summed over restarts).

``--keep DIR`` copies what the report reads of every finished run (records, predictions,
Fig. 1 curves; no checkpoints) into ``DIR/<net>``, small enough to commit; the measured runs
are kept in ``benchmarks/results/cifar10_pretrained`` and ``--workdir`` pointing there
reprints their tables and pairs without running anything.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import shutil
import subprocess
import sys
import threading
import time
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
CHECKPOINTS = {"resnet20": "resnet20-12fca82f.th", "resnet56": "resnet56-4bfd9763.th"}
EPOCHS = 10  # W4A4 (and ablation) epochs, fixed from the CPU budget before any result
ADAPT_EPOCHS = 3
PAPER_EPOCHS = 110  # the paper's 4-bit fine-tuning length: the opt-in w4a4_110ep (a GPU run)
BATCH = 128
# Weight clip multiple k below 4 bits. FAQ gives k = 4.12 for 4 bits only. For Gaussian
# weights the MSE-optimal clip of a symmetric uniform quantizer with 2^(b-1)-1 positive
# levels is 2.474 sigma (4-bit), 1.952 (3-bit), 1.224 (2-bit) (numerical minimisation over a
# standard normal); the paper's 4.12 is 1.665x the 4-bit optimum, and the same ratio gives
# k = 3.25 (3-bit) and 2.04 (2-bit): as conservative about outliers as the paper at 4 bits.
CLIP_K = {4: 4.12, 3: 3.25, 2: 2.04}
CORE = ("fp32_as_is", "fp32_adapted", "w8a8", "w4a4")
R20_ONLY = ("w4a4_nocalib", "w4a4_bnfloat", "w4a4_random", "w3a3", "w2a2", "noise_w8",
            "noise_w4", "noise_w2")
# LSQ (Esser et al., ICLR 2020) beside FAQ: its paper's lr and cosine decay, its weight decay
# per width (none on the steps), power-of-two steps (an integer network, like FAQ's).
LSQ_RUNS = ("lsq_w4a4", "lsq_w3a3", "lsq_w2a2")
LSQ_LR = 0.01
LSQ_WEIGHT_DECAY = {4: 1e-4, 3: 0.5e-4, 2: 0.25e-4}
# Run only when named in --runs: LSQ with the paper's unconstrained (float) steps,
# ResNet-56's LSQ, and the paper's full 110-epoch W4A4 schedule (w4a4_110ep: hours of CPU,
# minutes on a GPU).
OPT_IN = {"resnet20": (*(f"{r}_float" for r in LSQ_RUNS), "w4a4_110ep"),
          "resnet56": ("lsq_w4a4", "w4a4_110ep")}


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where the data is and how it is read, the same for every run of one command."""

    shared: pathlib.Path = SHARED  # the JPEG archives and the published checkpoints
    loader: str = "tf"  # config.data.loader: "numpy" on a machine without TensorFlow
    max_steps: int = -1  # smoke tests: caps every training stage


def runs_of(net: str) -> tuple[str, ...]:
    """The runs of ``net`` that run by default, in order."""
    return CORE + (R20_ONLY + LSQ_RUNS if net == "resnet20" else ())


def known_runs(net: str) -> tuple[str, ...]:
    """Every run ``--runs`` accepts for ``net``: the default ones, then the opt-in ones."""
    return runs_of(net) + OPT_IN.get(net, ())


def lsq_pow2(name: str) -> bool:
    """Whether LSQ run ``name`` learns power-of-two steps (all but the ``_float`` ones)."""
    return not name.endswith("_float")


def base_config(net: str, weights: str, norm, setup: Setup = Setup()) -> Any:
    """CIFAR-10 JPEG archives, all 50,000 training images, the 10,000 test images."""
    from faq_jax.config import defaults

    c = defaults.get_base(f"cifar_{net}", 8, 8, dataset="cifar10")
    c.num_classes = 10
    c.data.archive = str(setup.shared / "cifar10-jpeg.tar.gz")
    c.data.test_archive = str(setup.shared / "cifar10-test-jpeg.tar.gz")
    c.data.loader = setup.loader
    c.data.eval_split = "test"
    c.data.val_per_class = 0
    c.data.image_size = c.data.eval_resize = 32
    c.data.augment = "cifar"
    c.data.mean, c.data.std = norm  # the checkpoints' own normalisation (ImageNet's)
    c.data.num_train = 50_000
    c.data.shuffle_buffer = 8192
    c.init_checkpoint = weights
    c.batch_size = BATCH
    c.eval_batch_size = 500
    c.optim.weight_decay = 1e-4
    c.log_every_steps = 50
    c.checkpoint_every_steps = 100
    c.eval_every_epochs = 1000  # no mid-run test evaluations: nothing is chosen on them
    c.analysis.weight_similarity = True
    return c


def run_config(net: str, name: str, weights: str, adapted: str, norm,
               setup: Setup = Setup()) -> Any:
    """The config of run ``name`` (see the module docstring)."""
    from faq_jax.config import defaults

    c = base_config(net, weights if name.startswith("fp32") else adapted, norm, setup)
    if name == "fp32_as_is":
        c.quant.enabled, c.stages = False, "eval_fp32"
        return c
    if name == "fp32_adapted":
        c.quant.enabled, c.stages = False, "pretrain,eval_fp32"
        c.pretrain.num_epochs, c.pretrain.batch_size = ADAPT_EPOCHS, BATCH
        c.pretrain.optim = defaults.optim_config(0.01, "cosine", 1e-4)
        c.pretrain.optim.final_lr = 0.0
        return c
    c.stages = "calibrate,eval_quant,finetune"
    if name == "w8a8":
        c.num_epochs = 1
        c.optim = defaults.optim_config(1e-4, "constant", 1e-4)
        return c
    if name.startswith("lsq_"):
        bits = int(name.split("_")[1][1])  # lsq_w3a3[_float] -> 3
        c.quant.method, c.quant.lsq_pow2 = "lsq", lsq_pow2(name)
        c.quant.w_bits = c.quant.a_bits = bits
        c.num_epochs = EPOCHS
        c.optim = defaults.optim_config(LSQ_LR, "cosine", LSQ_WEIGHT_DECAY[bits])
        c.optim.final_lr = 0.0
        return c
    bits = {"w3a3": 3, "w2a2": 2, "noise_w8": 8, "noise_w2": 2}.get(name, 4)
    c.quant.w_bits = c.quant.a_bits = bits
    c.quant.weight_clip_std = CLIP_K.get(bits, 4.12)
    c.num_epochs = PAPER_EPOCHS if name == "w4a4_110ep" else EPOCHS
    c.optim = defaults.optim_config(0.0015, "anneal", 1e-4)
    c.optim.final_lr = 1e-6
    if name == "w4a4_nocalib":
        c.calib.enabled = False
    elif name == "w4a4_bnfloat":
        c.quant.quantize_bn = False
    elif name == "w4a4_random":
        c.init, c.init_checkpoint, c.calib.enabled = "random", "", False
        c.optim.lr = 0.1
    elif name.startswith("noise_"):
        c.stages = "calibrate,finetune"
        c.max_steps = 200
        c.log_every_steps = 5
        c.analysis.grad_noise, c.analysis.weight_similarity = True, False
    return c


class CpuClock:
    """Process CPU seconds spent in one run, summed over restarts (written every 30 s)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.before = json.loads(path.read_text())["cpu_s"] if path.exists() else 0.0
        self.t0 = time.process_time()
        self.w0 = time.time()
        self.prev_wall = json.loads(path.read_text())["wall_s"] if path.exists() else 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def total(self) -> dict[str, float]:
        return {"cpu_s": self.before + time.process_time() - self.t0,
                "wall_s": self.prev_wall + time.time() - self.w0}

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.total()))
        os.replace(tmp, self.path)

    def _loop(self) -> None:
        while not self._stop.wait(30):
            self._write()

    def __enter__(self) -> CpuClock:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._write()


def predictions(model: Any, variables: dict[str, Any], config: Any) -> dict[str, np.ndarray]:
    """Predicted class, label and the normalised image of every test image, in order."""
    import jax

    from faq_jax import data

    apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
    preds, labels, images = [], [], []
    for b in data.eval_batches(config, local_batch_size=config.eval_batch_size):
        m = b["mask"]
        preds.append(np.asarray(apply(variables, b["image"])).argmax(-1)[m])
        labels.append(b["label"][m])
        images.append(np.asarray(b["image"])[m])
    return {"pred": np.concatenate(preds), "label": np.concatenate(labels),
            "images": np.concatenate(images)}


def integer_check(net_name: str, model: Any, variables: dict[str, Any], images: np.ndarray,
                  labels: np.ndarray, out: pathlib.Path) -> dict[str, Any]:
    """Exports the fine-tuned network to integers and runs it on every test image: the NumPy
    executor (ResNet-20) or the integer ONNX model (ResNet-56) against the float64
    simulation of the same codes."""
    import jax
    import jax.numpy as jnp

    from faq_jax import export

    net = export.export(model, variables, input_shape=images.shape[1:])
    export.save(net, str(out / "integer.npz"))
    codes = export.input_codes(net, images)
    l_in = next(n for n in net.nodes if n["op"] == "input")["l"]
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64)
                           if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) else a,
                           variables)
        sim = jax.jit(lambda v, x: model.apply(v, x, train=False))
        ref = np.concatenate([np.asarray(sim(v64, jnp.ldexp(jnp.asarray(
            codes[i:i + 500], jnp.float64), l_in))).argmax(-1)
            for i in range(0, len(codes), 500)])
    if net_name == "resnet20":
        runner = "NumPy integer executor"
        got = np.concatenate([export.run(net, codes[i:i + 250])[0].argmax(-1)
                              for i in range(0, len(codes), 250)])
    else:
        from faq_jax.export import onnx_deploy, onnx_writer

        runner = "integer ONNX model (onnxruntime)"
        path = out / "integer.onnx"
        onnx_writer.save(net, str(path))
        sess = onnx_deploy.session(str(path))
        got = np.concatenate([onnx_deploy.run(sess, codes=codes[i:i + 250]).argmax(-1)
                              for i in range(0, len(codes), 250)])
    return {"runner": runner, "agree": int(np.sum(got == ref)), "n": int(len(ref)),
            "integer_top1": 100.0 * float(np.mean(got == labels)),
            "float64_sim_top1": 100.0 * float(np.mean(ref == labels))}


def convert(net: str, wd: pathlib.Path, shared: pathlib.Path = SHARED) -> str:
    """``python -m weights_convert`` of the published checkpoint (once), with --verify."""
    out = wd / "converted"
    if not (out / "manifest.json").exists():
        cmd = [sys.executable, "-m", "weights_convert", "--arch", f"cifar_{net}",
               "--state-dict", str(shared / "pretrained" / "cifar_resnet" / CHECKPOINTS[net]),
               "--out", str(out), "--verify"]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, cwd=ROOT)
    return str(out)


def run_one(net: str, name: str, wd: pathlib.Path, weights: str, norm,
            setup: Setup = Setup()) -> dict[str, Any]:
    """Runs (or resumes) ``name``; returns its record (summary, predictions file, times)."""
    import jax

    from faq_jax import converted, models, train
    from faq_jax import policy as policy_lib

    rdir = wd / name
    record_path = rdir / "record.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    adapted = str(wd / "fp32_adapted_weights")
    c = run_config(net, name, weights, adapted, norm, setup)
    if setup.max_steps > 0:
        c.max_steps = min(setup.max_steps, c.max_steps) if c.max_steps > 0 else setup.max_steps
    with CpuClock(rdir / "cpu_time.json") as clock:
        result = train.train_and_evaluate(c, str(rdir / "run"))
        variables = jax.device_get(result.pop("variables"))
        if name == "fp32_adapted" and not pathlib.Path(adapted).exists():
            converted.save(adapted, {k: variables[k] for k in ("params", "batch_stats")},
                            {"arch": c.arch, "num_classes": 10,
                             "source": f"benchmarks/cifar10_pretrained.py {name}",
                             "input_normalization": {"mean": list(norm[0]),
                                                     "std": list(norm[1])}})
        record: dict[str, Any] = {"summary": {k: v for k, v in result.items()
                                              if k not in ("calibrated_lsb", "lsq_init_steps")}}
        if not name.startswith("noise_"):
            policy = policy_lib.from_config(c.quant, c.calib)
            model = models.create(c.arch, policy=policy, num_classes=10)
            p = predictions(model, variables, c)
            np.savez_compressed(rdir / "predictions.npz", pred=p["pred"], label=p["label"])
            record["top1"] = 100.0 * float(np.mean(p["pred"] == p["label"]))
            if name in ("w8a8", "w4a4", "w4a4_110ep") or (name.startswith("lsq_")
                                                         and lsq_pow2(name)):
                record["integer"] = integer_check(net, model, variables, p["images"],
                                                  p["label"], rdir)
    record.update(clock.total())
    record_path.write_text(json.dumps(record, indent=2, sort_keys=True))
    print(f"== {net} {name}: {json.dumps({k: v for k, v in record.items() if k != 'summary'})}",
          flush=True)
    return record


def report(net: str, wd: pathlib.Path) -> str:
    """The Markdown table of every finished run, paired against fp32_adapted."""
    from faq_jax import paired

    recs = {n: json.loads((wd / n / "record.json").read_text()) for n in known_runs(net)
            if (wd / n / "record.json").exists()}
    lines = [f"### CIFAR-10 {net}: all 10,000 JPEG test images, final checkpoints",
             "", "| run | top-1 | diff vs fp32_adapted | paired 95% CI | b/c | McNemar p | "
             "CPU min |", "|---|---|---|---|---|---|---|"]
    base = wd / "fp32_adapted" / "predictions.npz"
    base_ok = np.load(base) if base.exists() else None
    for name, r in recs.items():
        cpu = f"{r['cpu_s'] / 60:.0f}"
        f = wd / name / "predictions.npz"
        if base_ok is not None and f.exists() and name != "fp32_adapted":
            p = np.load(f)
            cmp = paired.compare(base_ok["pred"] == base_ok["label"], p["pred"] == p["label"])
            lines.append(paired.format_row(name, cmp) + f" {cpu} |")
        elif "top1" in r:
            lines.append(f"| {name} | {r['top1']:.2f} | | | | | {cpu} |")
    extra = []
    for name, r in recs.items():
        if "integer" in r:
            i = r["integer"]
            extra.append(f"- {name} integer export ({i['runner']}): same class as the float64 "
                         f"simulation on {i['agree']}/{i['n']} images; integer top-1 "
                         f"{i['integer_top1']:.2f} (simulation {i['float64_sim_top1']:.2f})")
        wc = r.get("summary", {}).get("weight_cosine")
        if wc:
            extra.append(f"- {name} mean weight cosine start vs end (Fig. 2): {wc['mean']:.4f}")
    return "\n".join(lines + [""] + extra + lsq_vs_faq(net, wd) + grad_noise_lines(wd))


def grad_noise_lines(wd: pathlib.Path) -> list[str]:
    """Fig. 1 from the finished noise runs (see :func:`summarize_grad_noise`)."""
    import ml_collections

    from faq_jax import models, writers
    from faq_jax import policy as policy_lib

    curves: dict[int, dict[str, list[tuple[int, float]]]] = {}
    at_width: dict[int, set[str]] = {}
    for b in (8, 4, 2):
        run = wd / f"noise_w{b}" / "run"
        if not (wd / f"noise_w{b}" / "record.json").exists():
            continue
        cfg = ml_collections.ConfigDict(json.loads((run / "config.json").read_text()))
        policy = models.create(cfg.arch, policy=policy_lib.from_config(cfg.quant, cfg.calib),
                               num_classes=10).policy
        curves[b] = {t[len("grad_noise/"):]: v for t, v in writers.read_scalars(run).items()
                     if t.startswith("grad_noise/")}
        at_width[b] = {k for k in curves[b] if policy.weight_bits(k) == b}
    return summarize_grad_noise(curves, at_width)


def summarize_grad_noise(curves: dict[int, dict[str, list[tuple[int, float]]]],
                         at_width: dict[int, set[str]]) -> list[str]:
    """Fig. 1's numbers: per layer, the gradient-noise cosine averaged over the logged steps
    of the second half of the run, then the mean over the layers every run quantizes at its
    own width (the first and last stay 8-bit); between neighbouring widths, in how many of
    those layers the wider one is higher, with the exact two-sided sign test (ties dropped).

    ``curves``: bits -> layer -> [(step, cosine)] as logged (a step logged twice by a
    resumed run counts once, its last value); ``at_width``: bits -> the layers at that width.
    """
    from faq_jax import paired

    curves = {b: c for b, c in curves.items() if c}  # a run that logged no grad_noise/*
    if not curves:
        return []
    common = set.intersection(*(at_width[b] for b in curves))
    means, resumed = {}, []
    for b, per_layer in curves.items():
        steps = dict(next(iter(per_layer.values())))
        half = max(steps) // 2
        means[b] = {k: float(np.mean([v for s, v in dict(vals).items() if s > half]))
                    for k, vals in per_layer.items() if k in common}
        if any(len(dict(vals)) < len(vals) for vals in per_layer.values()):
            resumed.append(f"W{b}A{b}")
    out = ["", "### Gradient noise (Fig. 1)", "",
           f"Per layer, the cosine averaged over the logged steps of each run's second half; "
           f"mean over the {len(common)} layers every run quantizes at its own width:", ""]
    out += [f"- W{b}A{b}: {np.mean(list(m.values())):.3f}" for b, m in means.items()]
    for hi, lo in ((8, 4), (4, 2)):
        if hi in means and lo in means:
            up = sum(means[hi][k] > means[lo][k] for k in common)
            down = sum(means[hi][k] < means[lo][k] for k in common)
            out.append(f"- W{hi}A{hi} above W{lo}A{lo} in {up} of {len(common)} layers, below "
                       f"in {down} (sign test p {paired.format_p(paired.mcnemar_p(down, up))})")
    if resumed:
        out.append(f"- resumed, so their EMA restarted mid-run: {', '.join(resumed)}")
    return out


def _correct(wd: pathlib.Path, name: str) -> np.ndarray | None:
    """Per-image correctness of a finished run (None if it is unfinished or has no
    predictions)."""
    f = wd / name / "predictions.npz"
    if not f.exists() or not (wd / name / "record.json").exists():
        return None
    p = np.load(f)
    return p["pred"] == p["label"]


def lsq_vs_faq(net: str, wd: pathlib.Path) -> list[str]:
    """LSQ and FAQ side by side per width: each against fp32_adapted, and LSQ against FAQ,
    paired on the same 10,000 images (difference, 95% interval, McNemar's exact p)."""
    from faq_jax import paired

    base = _correct(wd, "fp32_adapted")
    widths = [b for b in (4, 3, 2) if f"lsq_w{b}a{b}" in known_runs(net)]
    if base is None or not widths:
        return []

    def cell(cmp):
        return (f"{cmp['run']:.2f} | {cmp['diff']:+.2f} [{cmp['ci_low']:+.2f}, "
                f"{cmp['ci_high']:+.2f}] | {paired.format_p(cmp['mcnemar_p'])}")

    lines = ["", f"### LSQ beside FAQ, CIFAR-10 {net} (fp32_adapted {100 * base.mean():.2f}%; "
             "same data, epochs, 8-bit first/last layers)", "",
             "| width | FAQ top-1 | FAQ − fp32 [95% CI] | p | LSQ top-1 | LSQ − fp32 "
             "[95% CI] | p | LSQ − FAQ [95% CI] | b/c | p |", "|---|" + "---|" * 9]
    within = {}
    for b in widths:
        for suffix in ("", "_float"):
            faq, lsq = _correct(wd, f"w{b}a{b}"), _correct(wd, f"lsq_w{b}a{b}{suffix}")
            if lsq is None and suffix:
                continue
            row = [f"W{b}A{b}" + (" (LSQ float steps)" if suffix else "")]
            row.append(cell(paired.compare(base, faq)) if faq is not None else "pending | | ")
            row.append(cell(paired.compare(base, lsq)) if lsq is not None else "pending | | ")
            if faq is not None and lsq is not None:
                d = paired.compare(faq, lsq)  # b: right by FAQ only, c: by LSQ only
                row.append(f"{d['diff']:+.2f} [{d['ci_low']:+.2f}, {d['ci_high']:+.2f}] | "
                           f"{d['b']}/{d['c']} | {paired.format_p(d['mcnemar_p'])}")
            else:
                row.append("pending | | ")
            lines.append("| " + " | ".join(row) + " |")
            if b == 2 and not suffix:
                within = {m: 100 * (base.mean() - c.mean()) for m, c in
                          (("FAQ", faq), ("LSQ", lsq)) if c is not None}
    if 2 in widths:
        if len(within) == 2:
            held = min(within.values()) <= 2.0
            lines += ["", f"- Claim (W2A2: at least one method within 2 points of fp32): "
                      f"{'held' if held else 'not held'} (drop FAQ {within['FAQ']:.2f}, "
                      f"LSQ {within['LSQ']:.2f} points)."]
        else:
            lines += ["", "- Claim (W2A2: at least one method within 2 points of fp32): "
                      "pending (both W2A2 runs needed)."]
    return lines


def keep(wd: pathlib.Path, dest: pathlib.Path, net: str) -> list[str]:
    """Copies what the report reads of every finished run of ``net`` from ``wd`` into
    ``dest``, in the same layout without checkpoints, exports or images: ``record.json``, the
    predictions (as uint8), and for a noise run its ``config.json`` and gradient-noise
    curves. The copy is small enough to commit; ``--report``, ``--pair`` and ``--plots`` read
    it as they read a workdir. Returns the runs kept."""
    from faq_jax import writers

    kept = []
    for name in known_runs(net):
        src, out = wd / name, dest / name
        if not (src / "record.json").exists():
            continue
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / "record.json", out / "record.json")
        if (src / "predictions.npz").exists():
            p = np.load(src / "predictions.npz")
            np.savez_compressed(out / "predictions.npz", pred=p["pred"].astype(np.uint8),
                                label=p["label"].astype(np.uint8))
        if name.startswith("noise_"):
            (out / "run").mkdir(exist_ok=True)
            shutil.copyfile(src / "run" / "config.json", out / "run" / "config.json")
            (out / "run" / writers.JSONL).unlink(missing_ok=True)
            w = writers.JsonlWriter(str(out / "run"))
            for tag, values in writers.read_scalars(src / "run").items():
                if tag.startswith("grad_noise/"):
                    for step, v in values:  # a step logged twice stays twice
                        w.write_scalars(step, {tag: v})
        kept.append(name)
    return kept


def pair(wd: pathlib.Path, a: str, b: str) -> str:
    """Run ``b`` against run ``a`` on the same test images (folders with a
    ``predictions.npz``, relative to the network's workdir or absolute)."""
    from faq_jax import paired

    correct, labels = [], []
    for name in (a, b):
        f = wd / os.path.expanduser(name) / "predictions.npz"  # an absolute name wins
        if not f.exists():
            raise SystemExit(f"--pair: {f} does not exist; give finished runs (folders with "
                             "predictions.npz), by name or path")
        p = np.load(f)
        labels.append(p["label"])
        correct.append(p["pred"] == p["label"])
    if labels[0].shape != labels[1].shape or not np.array_equal(*labels):
        raise SystemExit(f"--pair: {a} and {b} were not evaluated on the same images in the "
                         f"same order ({labels[0].size} and {labels[1].size} labels)")
    return paired.describe(paired.compare(*correct), f"{b} - {a}")


def plots(wd: pathlib.Path, docs: pathlib.Path) -> list[str]:
    """Fig. 1 and Fig. 2 from the finished ResNet-20 runs: ``docs/grad_noise.png`` (per
    layer at 8/4/2 bits, and the mean against the step), ``docs/weight_similarity.png``."""
    from faq_jax import analysis, writers

    def summary(name):
        f = wd / name / "record.json"
        return json.loads(f.read_text())["summary"] if f.exists() else {}

    written = []
    noise = {}
    for b in (8, 4, 2):
        s = summary(f"noise_w{b}")
        if s and "grad_noise" not in s:  # resumed at its last step: the EMA was never run
            raise SystemExit(f"noise_w{b} finished without a gradient-noise result (it was "
                             f"resumed after its last step); delete {wd / f'noise_w{b}'} and "
                             "run it again")
        if s:
            noise[f"W{b}A{b}"] = s["grad_noise"]["per_layer"]
    if noise:
        curves = {f"W{b}A{b}": {t[len("grad_noise/"):]: v for t, v in
                                writers.read_scalars(wd / f"noise_w{b}" / "run").items()
                                if t.startswith("grad_noise/")}
                  for b in (8, 4, 2) if f"W{b}A{b}" in noise}
        analysis.plot_grad_noise(noise, docs / "grad_noise.png", curves=curves)
        written.append(str(docs / "grad_noise.png"))
    sims = {n: summary(n)["weight_cosine"] for n in ("w8a8", "w4a4", "w3a3", "w2a2", "w4a4_random")
            if "weight_cosine" in summary(n)}
    if sims:
        analysis.plot_weight_similarity(sims, docs / "weight_similarity.png")
        written.append(str(docs / "weight_similarity.png"))
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=sorted(CHECKPOINTS), required=True)
    ap.add_argument("--workdir", default="~/.cache/faq_jax/study")
    ap.add_argument("--runs", default="", help="comma list (default: all of this network's)")
    ap.add_argument("--report", action="store_true", help="print the table, run nothing")
    ap.add_argument("--plots", default="", help="with ResNet-20: write the Fig. 1/Fig. 2 PNGs "
                    "into this folder (e.g. docs)")
    ap.add_argument("--pair", nargs=2, metavar=("A", "B"),
                    help="print run B against run A, paired on the same images, run nothing")
    ap.add_argument("--keep", default="",
                    help="copy what the report reads of every finished run into "
                         "KEEP/<net> (no checkpoints; small enough to commit), run nothing; "
                         "--workdir KEEP then reports from the copy")
    ap.add_argument("--max_steps", type=int, default=-1,
                    help="smoke test: cap every training stage at this many steps (use "
                         "another --workdir; the numbers mean nothing)")
    ap.add_argument("--shared", default=str(SHARED),
                    help="folder of the JPEG archives and pretrained/cifar_resnet/")
    ap.add_argument("--loader", choices=("tf", "numpy"), default="tf",
                    help="config.data.loader: numpy where TensorFlow is not installed (the "
                         "same test images bit for bit; its own crop/flip draws)")
    args = ap.parse_args()
    setup = Setup(pathlib.Path(os.path.expanduser(args.shared)).absolute(), args.loader,
                  args.max_steps)
    wd = pathlib.Path(os.path.expanduser(args.workdir)).absolute() / args.net
    wanted = [r for r in args.runs.split(",") if r] or list(runs_of(args.net))
    unknown = set(wanted) - set(known_runs(args.net))
    if unknown:
        ap.error(f"unknown run(s) {sorted(unknown)} for {args.net}; runs: "
                 f"{known_runs(args.net)}")
    if args.pair:
        print(pair(wd, *args.pair))
        return
    if args.keep:
        dest = pathlib.Path(os.path.expanduser(args.keep)).absolute() / args.net
        print(f"kept in {dest}:", ", ".join(keep(wd, dest, args.net)) or "nothing (no "
              f"finished run in {wd})")
        return
    if not args.report:
        from faq_jax import converted

        wd.mkdir(parents=True, exist_ok=True)
        weights = convert(args.net, wd, setup.shared)
        norm = converted.input_normalization(weights)
        for name in known_runs(args.net):
            if name in wanted:
                if name != "fp32_adapted" and not name.startswith("fp32") and \
                        not (wd / "fp32_adapted_weights").exists():
                    run_one(args.net, "fp32_adapted", wd, weights, norm, setup)
                run_one(args.net, name, wd, weights, norm, setup)
    print(report(args.net, wd))
    if args.plots:
        for f in plots(wd, pathlib.Path(args.plots)):
            print("wrote", f)


if __name__ == "__main__":
    main()
