"""``python -m mll_jax.cli``: the ``mll-jax`` program."""

from mll_jax.cli.app import entry_point

entry_point()
