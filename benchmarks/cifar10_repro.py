"""FAQ's relative claims at small scale: CIFAR-10 ResNet-20 (FAQ.md section 8).

Trains the fp32 baseline with faq_jax's own trainer (saved as a converted-weights folder and
reused if present), then FAQ W8A8, FAQ W4A4 (first/last layer 8-bit) and the ablations:
W4A4 without calibration, W4A4 from random init (same steps), BatchNorm constants in float
vs quantized (W8A8, before and after fine-tuning), W8A8/W4A4 with ``compute_dtype=
"bfloat16_outputs"`` (the fast GPU mode, which rounds conv outputs to bf16), and 2/4/8-bit
gradient-noise curves.
Every run is a workdir under ``--workdir``; a rerun skips finished runs, so the command also
re-makes the table and plots. Results: ``<workdir>/results.json``, ``docs/*.png``.

CPU, real epoch counts (~110 minutes of an idle 2-core CPU; the setting of
benchmarks/RESULTS.md): 10-epoch baseline, 1-epoch W8A8, 4-epoch W4A4 runs::

    python benchmarks/cifar10_repro.py --setting=cpu --workdir=~/faq/cifar10_cpu

Quick smoke of the whole pipeline (~35 minutes: 1-epoch baseline, 60-step fine-tuning)::

    python benchmarks/cifar10_repro.py --setting=quick --workdir=~/faq/cifar10_repro

GPU (a paper-like schedule: 64-epoch baseline, 1-epoch W8A8, 30-epoch W4A4)::

    python benchmarks/cifar10_repro.py --setting=full --workdir=~/faq/cifar10_repro
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time
from typing import Any

from faq_jax import analysis, converted, train

ROOT = pathlib.Path(__file__).resolve().parent.parent

# ft_decay: W4A4 runs' exponential lr decay per epoch (None: the config's 0.85 over 30 epochs).
SETTINGS = {
    # Budgeted for ~35 minutes of a shared 2-core CPU before the train step was fixed.
    "quick": dict(base_epochs=1, base_lr=0.05, base_schedule="constant", ft_steps=60,
                  ft_epochs=1, ft_decay=None, noise_steps=40, noise_batch=32,
                  val_per_class=200),
    # ~110 minutes of an idle 2-core CPU (ResNet-20: ~2.5 min per epoch of 351 steps).
    "cpu": dict(base_epochs=10, base_lr=0.1, base_schedule="step", ft_steps=-1, ft_epochs=4,
                ft_decay=0.6, noise_steps=100, noise_batch=32, val_per_class=500),
    "full": dict(base_epochs=64, base_lr=0.1, base_schedule="step", ft_steps=-1, ft_epochs=30,
                 ft_decay=None, noise_steps=300, noise_batch=128, val_per_class=500),
}


def load_config(name: str) -> Any:
    """``configs/<name>.py``'s get_config()."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "configs" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def _common(c, s, name: str) -> None:
    c.data.val_per_class = s["val_per_class"]
    c.log_every_steps = 5 if name.startswith("noise") else 20
    c.analysis.weight_similarity = True


def experiments(s: dict[str, Any], weights: str) -> dict[str, Any]:
    """name -> config of every FAQ/ablation run (the baseline is separate)."""
    runs = {}

    def ft(name, cfg_name, **over):
        c = load_config(cfg_name)
        _common(c, s, name)
        c.init_checkpoint = weights
        c.num_epochs = s["ft_epochs"] if "w4" in cfg_name else 1
        c.max_steps = s["ft_steps"]
        if "w4" in cfg_name and s["ft_decay"] is not None:
            c.optim.decay_rate = s["ft_decay"]
        for k, v in over.items():
            node = c
            *parents, leaf = k.split(".")
            for p in parents:
                node = node[p]
            node[leaf] = v
        runs[name] = c

    ft("w8a8", "cifar10_r20_w8a8")
    ft("w8a8_bn_float", "cifar10_r20_w8a8", **{"quant.quantize_bn": False})
    ft("w4a4", "cifar10_r20_w4a4")
    # The fast GPU mode (bf16 conv/dense outputs, docs/speed.md): what it costs in accuracy.
    ft("w8a8_bf16", "cifar10_r20_w8a8", compute_dtype="bfloat16_outputs")
    ft("w4a4_bf16", "cifar10_r20_w4a4", compute_dtype="bfloat16_outputs")
    ft("w4a4_nocalib", "cifar10_r20_w4a4", **{"calib.enabled": False})
    ft("w4a4_random", "cifar10_r20_w4a4", **{"init": "random", "calib.enabled": False,
                                              "stages": "calibrate,eval_quant,finetune",
                                              "optim.lr": s["base_lr"]})
    # Control: the same 60 steps at W4A4's lr with quantization made (nearly) the identity
    # (24-bit weights/activations/input, BN float): what continued training alone gives.
    ft("fp32_continued", "cifar10_r20_w4a4", **{
        "quant.w_bits": 24, "quant.a_bits": 24, "quant.paper_rules": False,
        "quant.quantize_bn": False, "quant.input_bits": 24, "quant.input_lsb": -16})
    for bits in (8, 4, 2):
        ft(f"noise_w{bits}", "cifar10_r20_w4a4", **{
            "quant.w_bits": bits, "quant.a_bits": bits, "analysis.grad_noise": True,
            "stages": "calibrate,finetune", "max_steps": s["noise_steps"],
            "batch_size": s["noise_batch"], "analysis.weight_similarity": False})
    return runs


def baseline(s: dict[str, Any], workdir: pathlib.Path) -> str:
    """Trains (or reuses) the fp32 baseline; returns its converted-weights folder."""
    weights = workdir / "fp32_weights"
    c = load_config("cifar10_r20_fp32")
    _common(c, s, "fp32")
    c.pretrain.num_epochs = s["base_epochs"]
    c.pretrain.optim.lr = s["base_lr"]
    c.pretrain.optim.schedule = s["base_schedule"]
    if s["base_schedule"] == "step":
        c.pretrain.optim.step_epochs = (s["base_epochs"] // 2, 3 * s["base_epochs"] // 4)
    out = train.train_and_evaluate(c, str(workdir / "fp32"))
    if not weights.exists():
        converted.save(weights, {k: out["variables"][k] for k in ("params", "batch_stats")},
                        {"arch": "resnet20", "num_classes": 10,
                         "source": "benchmarks/cifar10_repro.py fp32 baseline"})
    return str(weights)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", default=os.path.expanduser("~/faq/cifar10_repro"))
    p.add_argument("--setting", choices=sorted(SETTINGS), default="cpu",
                   help="epoch budget: quick (smoke), cpu (~110 min here), full (GPU)")
    p.add_argument("--full", action="store_true", help="same as --setting=full")
    p.add_argument("--only", default="", help="comma list of run names (default: all)")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where the PNG plots go")
    args = p.parse_args()
    setting = "full" if args.full else args.setting
    s = SETTINGS[setting]
    wd = pathlib.Path(args.workdir).expanduser()
    wd.mkdir(parents=True, exist_ok=True)
    results_path = wd / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    if results.get("setting", setting) != setting:
        p.error(f"{wd} holds runs of --setting={results['setting']}; use another --workdir")
    results["setting"] = setting
    t0 = time.time()
    weights = baseline(s, wd)
    results["fp32"] = _strip(json.loads((wd / "fp32" / "summary.json").read_text()))
    results.setdefault("seconds", {}).setdefault("fp32", time.time() - t0)
    results_path.write_text(json.dumps(results, indent=2))
    only = set(filter(None, args.only.split(",")))
    for name, c in experiments(s, weights).items():
        if only and name not in only:
            continue
        done = wd / name / "summary.json"
        if done.exists() and "quant_after" in json.loads(done.read_text()):
            results[name] = json.loads(done.read_text())
            continue
        t0 = time.time()
        results[name] = _strip(train.train_and_evaluate(c, str(wd / name)))
        results["seconds"][name] = time.time() - t0
        results_path.write_text(json.dumps(results, indent=2))
        print(f"== {name} done in {time.time() - t0:.0f} s", flush=True)
    results_path.write_text(json.dumps(results, indent=2))
    print(table(results))
    plots(results, wd, pathlib.Path(args.docs))


def _strip(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in summary.items() if k != "variables"}


def _top1(r: dict[str, Any] | None, key: str) -> str:
    return f"{r[key]['top1']:.2f}" if r and key in r else "-"


def table(results: dict[str, Any]) -> str:
    """Markdown table: top-1 before/after fine-tuning of every run."""
    rows = ["| run | top-1 before FT | top-1 after FT | weight cosine |", "|---|---|---|---|",
            f"| fp32 baseline | {_top1(results.get('fp32'), 'fp32')} | | |"]
    for name in ("fp32_continued", "w8a8", "w8a8_bn_float", "w8a8_bf16", "w4a4", "w4a4_bf16",
                 "w4a4_nocalib", "w4a4_random"):
        r = results.get(name)
        cos = f"{r['weight_cosine']['mean']:.5f}" if r and "weight_cosine" in r else "-"
        rows.append(f"| {name} | {_top1(r, 'quant_before')} | {_top1(r, 'quant_after')} "
                    f"| {cos} |")
    for bits in (8, 4, 2):
        r = results.get(f"noise_w{bits}")
        if r and "grad_noise" in r:
            rows.append(f"| grad noise W{bits}A{bits}: mean cosine | | "
                        f"{r['grad_noise']['mean']:.3f} | |")
    return "\n".join(rows)


def plots(results: dict[str, Any], wd: pathlib.Path, docs: pathlib.Path) -> None:
    """docs/grad_noise.png, docs/weight_similarity.png, docs/accuracy.png."""
    docs.mkdir(parents=True, exist_ok=True)
    noise = {f"W{b}A{b}": results[f"noise_w{b}"]["grad_noise"]["per_layer"]
             for b in (2, 4, 8) if "grad_noise" in results.get(f"noise_w{b}", {})}
    if noise:
        curves = {f"W{b}A{b}": {t[len("grad_noise/"):]: v for t, v in
                                analysis.read_scalars(wd / f"noise_w{b}").items()
                                if t.startswith("grad_noise/")} for b in (2, 4, 8)
                  if (wd / f"noise_w{b}").exists()}
        analysis.plot_grad_noise(noise, docs / "grad_noise.png", curves=curves)
    sims = {name: results[name]["weight_cosine"] for name in ("w4a4", "w4a4_random", "w8a8")
            if "weight_cosine" in results.get(name, {})}
    if sims:
        analysis.plot_weight_similarity(sims, docs / "weight_similarity.png")
    names = ("fp32", "fp32_continued", "w8a8", "w4a4", "w4a4_nocalib", "w4a4_random")
    curves = {n: analysis.read_scalars(wd / n) for n in names if (wd / n).exists()}
    if curves:
        base = curves.get("fp32", {}).get("train/top1", [(0, 0.0)])[-1][0]
        analysis.plot_accuracy(curves, docs / "accuracy.png",
                               offsets={k: base for k in curves if k != "fp32"})


if __name__ == "__main__":
    main()
