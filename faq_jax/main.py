"""Entry point: ``python -m faq_jax.main [--config=configs/X.py] --workdir=DIR``.

Without ``--config`` it runs the embedded default (digits, ResNet-20, fp32 -> W4A4).
Overrides: ``--config.num_epochs=2 --config.quant.w_bits=4``; a workdir refuses a run whose
config differs from the one it recorded unless ``--continue_changed``. Multi-host: pass
``--distributed`` (TPU pods and SLURM/GPU clusters discover their peers) or the explicit
``--coordinator_address/--num_processes/--process_id``.
"""

import os

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "demo.py")
config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file (configs/*.py); "
                                "default: the embedded digits demo.", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events and summary.json.")
flags.DEFINE_bool("continue_changed", False, "Continue a workdir whose recorded config differs "
                  "from this one on purpose; the changes are recorded in config_history.json.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    del argv
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import jax

    if FLAGS.distributed or FLAGS.coordinator_address:
        # CPU processes need gloo for cross-process collectives; GPUs/TPUs ignore it.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                   FLAGS.process_id)
    from faq_jax import train

    config = FLAGS.config
    logging.info("process %d of %d; %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())
    try:
        train.train_and_evaluate(config, FLAGS.workdir,
                                 continue_changed=FLAGS.continue_changed)
    except (ValueError, FileNotFoundError) as e:  # bad config, data, weights or workdir
        logging.error("%s", e)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main)
