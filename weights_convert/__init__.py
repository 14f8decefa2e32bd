"""Converts torchvision weights to faq_jax checkpoints (needs the ``convert`` extra).

``weights_convert.mapping.convert(state_dict, arch)`` maps a state dict to Flax
variables; ``python -m weights_convert`` writes them as a faq_jax converted checkpoint
(read back with :func:`faq_jax.converted.load`).
"""
