"""mll_lab: the lab around mll-jax -- datasets, expert training, benchmark harnesses and result files.

Nothing in ``mll_jax`` imports this package; it uses only ``mll_jax``'s public API.
"""
