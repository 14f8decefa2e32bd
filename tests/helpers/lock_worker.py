"""One process of the 2-process lock test: jax.distributed on 127.0.0.1, then a demo run on
WORKDIR, whose run lock the test holds. Usage: python lock_worker.py PORT PROCESS_ID WORKDIR.
Prints ``REFUSED <message>`` when the run is refused, ``RAN`` otherwise."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402

port, pid, workdir_path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

from faq_jax import train, workdir  # noqa: E402
from faq_jax.config import demo  # noqa: E402

c = demo.get_config()
c.max_steps = 1
try:
    train.train_and_evaluate(c, workdir_path)
    print("RAN", flush=True)
except workdir.CheckpointError as e:
    print(f"REFUSED {e}", flush=True)
