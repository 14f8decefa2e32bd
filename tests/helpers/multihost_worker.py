"""One process of the 2-process test: jax.distributed on 127.0.0.1, a few FAQ steps.

Usage: python multihost_worker.py PORT PROCESS_ID WORKDIR. Prints a checksum of the
final parameters and the summary's accuracy, for the test to compare across processes.
"""

import hashlib
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import numpy as np  # noqa: E402

port, pid, workdir = sys.argv[1], int(sys.argv[2]), sys.argv[3]
jax.config.update("jax_cpu_collectives_implementation", "gloo")
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=pid)

from faq_jax import paired, train  # noqa: E402
from faq_jax.config import demo  # noqa: E402

c = demo.get_config()
c.stages = "calibrate,eval_quant,finetune"
c.batch_size = 32
c.eval_batch_size = 64
c.num_epochs = 1
c.max_steps = 4
c.log_every_steps = 2
result = train.train_and_evaluate(c, workdir)
h = hashlib.sha256()
for leaf in jax.tree.leaves(result["variables"]["params"]):
    h.update(np.ascontiguousarray(np.asarray(leaf, np.float32)).tobytes())
print(f"RESULT process={jax.process_index()} count={jax.process_count()} "
      f"devices={jax.device_count()} params={h.hexdigest()} "
      f"eval_count={result['quant_after']['count']} top1={result['quant_after']['top1']:.4f} "
      f"hits={hashlib.sha256(result['quant_after']['correct'].encode()).hexdigest()} "
      f"hit_count={int(paired.unpack(result['quant_after']['correct'], 300).sum())} "
      f"pairs={result['after_vs_before']['n']}", flush=True)
