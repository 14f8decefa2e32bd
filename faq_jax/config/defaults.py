"""Every knob of an FAQ run, with the paper's value (FAQ.md sections 2-5).

Experiment files in ``configs/`` call :func:`get_base` (or :func:`paper_finetune`,
:func:`cifar10_base`) and change what their row of the paper changes. The embedded run of
``python -m faq_jax.main`` without ``--config`` is :mod:`faq_jax.config.demo`.
"""

import os

import ml_collections

# Examples per split (ImageNet-1k train/val); explicit so no metadata file is needed.
IMAGENET_TRAIN = 1_281_167
IMAGENET_VAL = 50_000


def data_config(name: str = "imagenet2012") -> ml_collections.ConfigDict:
    """Input-pipeline fields (faq_jax/data reads only these + config.seed)."""
    return ml_collections.ConfigDict(dict(
        name=name,            # "imagenet2012" | "folder" | "cifar10" | "digits"
        data_dir="",          # TFDS data_dir ("" = TFDS default)
        manual_dir="",        # imagenet2012: folder with ILSVRC2012_img_{train,val}.tar;
        #                       cifar10 (source="tfds"): folder with cifar-10-binary.tar.gz
        train_dir="",         # folder: root/<class>/<image> for training
        eval_dir="",          # folder: same layout for evaluation
        source="archive",     # cifar10: "archive" (data.archive) | "tfds" (prepared cifar10)
        archive="",           # cifar10: cifar10-jpeg.tar.gz, cifar-10-python.tar.gz or
        #                       cifar-10-binary.tar.gz (format detected by content)
        test_archive="",      # cifar10, JPEG archive, eval_split="test": cifar10-test-jpeg.tar.gz
        eval_split="val",     # cifar10: "val" (held out of train) | "test" (the 10,000
        #                       test images; all 50,000 training images train)
        cache_dir="",         # where archives are extracted ("" = ~/.cache/faq_jax)
        val_per_class=500,    # cifar10, eval_split="val": last N images of each class
        image_size=224,       # train crop / eval crop (inception_v3: 299)
        eval_resize=256,      # eval: shorter side resized to this, centre crop (inception: 342)
        augment="imagenet",   # "imagenet" (RandomResizedCrop+flip) | "cifar" | "none"
        mean=(0.485, 0.456, 0.406),
        std=(0.229, 0.224, 0.225),
        dtype="float32",      # image dtype handed to the model: "float32" | "bfloat16"
        loader="tf",          # "tf" (tf.data, every dataset) | "numpy" (no TensorFlow: CIFAR-10
        #                       archives and folders of image_size images; data/numpy_loader.py)
        shuffle_buffer=16384,
    ))


def optim_config(lr: float, schedule: str = "constant", weight_decay: float = 1e-4,
                 ) -> ml_collections.ConfigDict:
    """SGD with momentum and coupled weight decay; lr schedules by epoch."""
    return ml_collections.ConfigDict(dict(
        lr=lr,                  # 8-bit: 1e-4; 4-bit: 0.0015
        schedule=schedule,      # "constant" | "exponential" | "step" (per epoch);
        #                         "anneal" | "cosine" (per optimizer step t of T)
        decay_rate=0.936,       # exponential: lr * decay_rate^epoch (4-bit: 0.0015 -> ~1e-6)
        final_lr=1e-6,          # anneal: lr (final_lr/lr)^(t/T); cosine: down to final_lr
        step_epochs=(30, 60, 90),  # step: epochs where lr is multiplied by step_factor
        step_factor=0.1,
        momentum=0.9,
        nesterov=False,
        weight_decay=weight_decay,  # coupled (added to the gradient), as torch.optim.SGD
    ))


def get_base(arch: str, w_bits: int, a_bits: int, *, num_epochs: int = 1,
             lr: float = 1e-4, schedule: str = "constant", weight_decay: float = 1e-4,
             dataset: str = "imagenet2012") -> ml_collections.ConfigDict:
    """An FAQ fine-tuning run of torchvision's ``arch`` at W``w_bits``A``a_bits``."""
    c = ml_collections.ConfigDict()
    c.arch = arch
    c.num_classes = 1000
    c.seed = 0
    c.data = data_config(dataset)
    if arch == "inception_v3":
        c.data.image_size, c.data.eval_resize = 299, 342
    c.data.num_train = IMAGENET_TRAIN  # informational; the pipeline counts the real split
    # "bfloat16": bf16 conv/matmul operands, exact for <= 8-bit ones; "bfloat16_outputs":
    # bf16 outputs too (fast cuDNN kernels, forward values change). See docs/speed.md.
    c.compute_dtype = "float32"

    # Precision policy (FAQ.md sections 2 and 4).
    c.quant = ml_collections.ConfigDict(dict(
        enabled=True,
        w_bits=w_bits,            # conv/dense weights, signed, per-tensor l every step
        a_bits=a_bits,            # ReLU outputs (unsigned), calibrated l
        paper_rules=True,         # below 8 bits: first/last weights, last ReLU, FC input 8-bit
        rules=(),                 # extra (module-path glob or @role, w_bits|None, a_bits|None
        #                           [, "faq"|"lsq"]): widths and, optionally, method per layer
        # How step sizes are set. "faq": by rule (weights: k*std every step; activations:
        # calibrated once, frozen; l's in the `quant` collection). "lsq": learned (Esser et
        # al., ICLR 2020; faq_jax/lsq.py): one step per quantizer in `params`, no weight decay,
        # started by the calibrate stage (weights: 2<|w|>/sqrt(Q_P) of the weights fine-tuning
        # starts from; activations: the same of the first calibration batch). Widths, 8-bit
        # first/last layers, BN constants, biases and the input are the same for both.
        method="faq",
        lsq_pow2=False,           # lsq: learn log2(s), steps are powers of two -> the network
        #                           stays fixed-point and exports to integers (faq_jax.export)
        weight_clip_std=4.12,     # k: clip weights at k*std below maxabs_bits (paper, 4-bit)
        maxabs_bits=8,            # >= this: Δ = max|w| / (2^(b-1) - 1)
        quantize_bn=True,         # BN folded: s 8-bit l=-4, t 32-bit l=-16
        bn_scale_bits=8, bn_scale_lsb=-4,
        bn_shift_bits=32, bn_shift_lsb=-16,
        bias_bits=32, bias_lsb=-16,
        input_bits=8, input_lsb=-5,  # normalised image: covers ±3.97
    ))
    if arch == "inception_v3":  # its quantizer reads transform_input's 2p - 1 in [-1, 1]:
        c.quant.input_lsb = -7  # 254 codes (l = -5: 65); benchmarks/inception_input_lsb.py
    # Activation calibration (FAQ.md section 3).
    c.calib = ml_collections.ConfigDict(dict(
        enabled=True,             # False: FAQ's control, y_max = 2^(b/2) - 1
        num_batches=5,
        percentile_8bit=99.99,
        percentile_lowbit=99.9,
    ))

    # Weights to start from: a `python -m weights_convert` output folder.
    c.init_checkpoint = ""
    c.init = "pretrained"  # "pretrained" | "random" (FAQ's from-scratch control)
    # Stages, in order: pretrain (fp32 training), eval_fp32, calibrate, eval_quant, finetune.
    c.stages = "eval_fp32,calibrate,eval_quant,finetune"

    # Fine-tuning (FAQ.md section 5).
    c.num_epochs = num_epochs
    c.batch_size = 256            # examples per optimizer update
    c.micro_batch_size = 0        # 0 = batch_size; smaller = gradient accumulation
    c.batch_schedule = ()         # ((first_epoch, batch_size), ...) e.g. 256 -> 2048
    c.eval_batch_size = 250
    c.optim = optim_config(lr, schedule, weight_decay)
    c.label_smoothing = 0.0
    c.aux_loss_weight = 0.4       # inception_v3 auxiliary classifier (torchvision recipe)

    # fp32 training of a baseline (small-scale work; ImageNet starts from torchvision).
    c.pretrain = ml_collections.ConfigDict(dict(
        num_epochs=0, batch_size=128, optim=optim_config(0.1, "step", 1e-4)))

    # Bookkeeping.
    c.log_every_steps = 100
    c.checkpoint_every_steps = 1000
    c.keep_checkpoints = 2
    c.eval_every_epochs = 1
    c.max_steps = -1              # > 0: stop each training stage (pretrain, fine-tune)
    #                               after this many updates (smoke runs; keep it unchanged
    #                               across the runs of one workdir)
    c.max_eval_batches = -1       # > 0: evaluate on a prefix only (smoke; not exact)
    c.analysis = ml_collections.ConfigDict(dict(
        grad_noise=False,         # per-layer cosine(float step, EMA of quantized step)
        grad_noise_ema=0.9,
        weight_similarity=True,   # per-layer cosine of weights before/after fine-tuning
    ))
    return c


def runlocal(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config to a few steps on CPU (``--config=FILE:runlocal``)."""
    c.batch_size = 8
    c.micro_batch_size = 0
    c.batch_schedule = ()
    c.eval_batch_size = 8
    c.calib.num_batches = 1
    c.max_steps = 2
    c.max_eval_batches = 2
    c.log_every_steps = 1
    c.data.shuffle_buffer = 64
    return c


def paper_finetune(arch: str, bits: int, **kwargs) -> ml_collections.ConfigDict:
    """FAQ's ImageNet recipe (FAQ.md section 5) for a Table 1 row at W``bits``A``bits``.

    8-bit: 1 epoch at lr 1e-4, constant. 4-bit: 110 epochs, lr 0.0015 x 0.936 per epoch;
    weight decay 1e-4 (ResNet-18 at 4 bits: 0.5e-4).
    """
    if bits >= 8:
        c = get_base(arch, bits, bits, num_epochs=1, lr=1e-4, schedule="constant",
                     weight_decay=1e-4, **kwargs)
    else:
        wd = 0.5e-4 if arch == "resnet18" else 1e-4
        c = get_base(arch, bits, bits, num_epochs=110, lr=0.0015, schedule="exponential",
                     weight_decay=wd, **kwargs)
        c.optim.decay_rate = 0.936
    return c


def with_arg(c: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
    """Applies the ``:runlocal`` suffix of ``--config=FILE:runlocal``."""
    if arg in (None, ""):
        return c
    if arg == "runlocal":
        return runlocal(c)
    raise ValueError(f"unknown config argument {arg!r}; the only one is 'runlocal'")


def _shared_data(beside: str, name: str) -> str:
    root = os.path.dirname(os.path.dirname(os.path.abspath(beside)))
    return os.path.normpath(os.path.join(root, "..", "shared", "data", name))


def shared_cifar10_archive(beside: str) -> str:
    """``../shared/data/cifar10-jpeg.tar.gz`` beside the repository that holds ``beside``.

    ``beside`` is a file one folder below the repository root (a config, test or benchmark:
    pass its ``__file__``).
    """
    return _shared_data(beside, "cifar10-jpeg.tar.gz")


def shared_cifar10_test_archive(beside: str) -> str:
    """``../shared/data/cifar10-test-jpeg.tar.gz`` (the 10,000 test images), as
    :func:`shared_cifar10_archive`."""
    return _shared_data(beside, "cifar10-test-jpeg.tar.gz")


def cifar10_base(w_bits: int, a_bits: int, archive: str,
                 test_archive: str = "") -> ml_collections.ConfigDict:
    """ResNet-20 on the CIFAR-10 JPEG archive: 32x32, pad-crop-flip, CIFAR mean/std.

    ``archive`` is the path of ``cifar10-jpeg.tar.gz`` (configs/cifar10_r20_*.py point it at
    ``../shared/data`` beside the repository), ``test_archive`` that of
    ``cifar10-test-jpeg.tar.gz``, read when ``data.eval_split="test"``.
    """
    c = get_base("resnet20", w_bits, a_bits, dataset="cifar10")
    c.num_classes = 10
    c.data.archive = archive
    c.data.test_archive = test_archive
    c.data.image_size = 32
    c.data.eval_resize = 32
    c.data.augment = "cifar"
    c.data.mean = (0.4914, 0.4822, 0.4465)
    c.data.std = (0.2470, 0.2435, 0.2616)
    c.data.num_train = 45_000
    c.data.shuffle_buffer = 8192
    c.batch_size = 128
    c.eval_batch_size = 500
    c.log_every_steps = 50
    c.checkpoint_every_steps = 500
    return c
