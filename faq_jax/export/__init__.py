"""Integer-only export of a fine-tuned FAQ network (``docs/export.md``).

The modules, from the bottom up (each imports only those above it in this list):

- :mod:`~faq_jax.export.intnet`: the file format: :class:`IntegerNetwork`, :func:`save`,
  :func:`load`, :data:`FORMAT`, :data:`VERSION`, :class:`ExportError`, :func:`int_dtype`;
- :mod:`~faq_jax.export.graph`: the layer graph of a quantized model, from its jaxpr;
- :mod:`~faq_jax.export.exporter`: :func:`export` (model + variables -> IntegerNetwork);
- :mod:`~faq_jax.export.executor`: the NumPy integer executor (:func:`run`,
  :func:`input_codes`);
- :mod:`~faq_jax.export.onnx_writer`: the ONNX form (needs the ``export`` extra; import it
  explicitly: ``from faq_jax.export import onnx_writer``);
- :mod:`~faq_jax.export.onnx_deploy`: the int8 deployment ONNX model (QDQ, onnxruntime's
  fast path, not bit-exact; ``from faq_jax.export import onnx_deploy``);
- :mod:`~faq_jax.export.cli`: ``python -m faq_jax.export --workdir DIR --out net.npz``.
"""

from faq_jax.export.executor import IntegerOverflowError, IntTensor, input_codes, run
from faq_jax.export.exporter import export, random_variables
from faq_jax.export.intnet import (
    FORMAT,
    VERSION,
    ExportError,
    IntegerNetwork,
    int_dtype,
    load,
    save,
)

__all__ = [
    "FORMAT",
    "VERSION",
    "ExportError",
    "IntTensor",
    "IntegerNetwork",
    "IntegerOverflowError",
    "export",
    "input_codes",
    "int_dtype",
    "load",
    "random_variables",
    "run",
    "save",
]
