"""Converts torchvision weights to faq_jax checkpoints (needs the ``convert`` extra).

``weights_convert.convert(state_dict, arch)`` (:mod:`weights_convert.mapping`) maps a state
dict to Flax variables; ``python -m weights_convert`` writes them as a faq_jax converted
checkpoint (read back with :func:`faq_jax.converted.load`). Neither imports torch.
"""

from weights_convert.mapping import convert, num_classes

__all__ = ["convert", "num_classes"]
