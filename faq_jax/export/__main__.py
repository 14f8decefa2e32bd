"""``python -m faq_jax.export``: see :mod:`faq_jax.export.cli`."""

from faq_jax.export import cli

if __name__ == "__main__":
    cli.main()
