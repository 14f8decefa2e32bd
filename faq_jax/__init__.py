"""faq_jax: FAQ (Fine-tuning After Quantization) for torchvision CNNs in JAX/Flax.

Importing the package loads neither TensorFlow nor torch: the quantizer, layers, models
and train step run on images that ship only jax. Input pipelines import TensorFlow
lazily (``faq_jax.lazy_imports``) and weight conversion imports torch.
"""

__version__ = "0.1.0"
