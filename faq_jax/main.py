"""Entry point: ``python -m faq_jax.main [--config=configs/X.py] --workdir=DIR``.

Without ``--config`` it runs the embedded default (digits, ResNet-20, fp32 -> W3A3).
Overrides: ``--config.num_epochs=2 --config.quant.w_bits=4``; a workdir refuses a run whose
config differs from the one it recorded unless ``--continue_changed``. Multi-host: pass
``--distributed`` (TPU pods and SLURM/GPU clusters discover their peers) or the explicit
``--coordinator_address/--num_processes/--process_id``. The console is quiet (progress
bars, the result table, warnings); ``--verbosity=0`` brings back every INFO log and the
traceback of an error.
"""

import os

from absl import app, flags

from faq_jax import console

FLAGS = flags.FLAGS
_DEFAULT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "demo.py")


def _define_flags() -> None:
    """The flags; ml_collections reads the ``--config.*`` overrides while defining them."""
    from ml_collections import config_flags  # noqa: PLC0415

    config_flags.DEFINE_config_file("config", _DEFAULT, "Experiment config file "
                                    "(configs/*.py); default: the embedded digits demo.",
                                    lock_config=True)
    flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard events and summary.json.")
    flags.DEFINE_bool("continue_changed", False, "Continue a workdir whose recorded config "
                      "differs from this one on purpose; the changes are recorded in "
                      "config_history.json.")
    flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host).")
    flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-host).")
    flags.DEFINE_integer("num_processes", None, "Number of processes (multi-host).")
    flags.DEFINE_integer("process_id", None, "This process's index (multi-host).")
    flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    del argv
    console.configure_from_flags()
    # ImportError: a missing optional framework (TensorFlow for the tf loader), named.
    with console.exit_on_error(extra=(ImportError,)):
        config = console.config_flag_value("config")
        import jax  # noqa: PLC0415

        if FLAGS.distributed or FLAGS.coordinator_address:
            # CPU processes need gloo for cross-process collectives; GPUs/TPUs ignore it.
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
            jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes,
                                       FLAGS.process_id)
        from faq_jax import train  # noqa: PLC0415

        train.train_and_evaluate(config, FLAGS.workdir,
                                 continue_changed=FLAGS.continue_changed)


def run() -> None:
    """Defines the flags (a bad ``--config.*`` override fails here, as one line) and runs."""
    console.define_flags(_define_flags)
    app.run(main, flags_parser=console.parse_flags)


if __name__ == "__main__":
    run()
