"""``python -m weights_convert``: see :mod:`weights_convert.cli`."""

from weights_convert import cli

if __name__ == "__main__":
    raise SystemExit(cli.main())
