"""``python -m mll_jax.run [flags]``: the benchmarks' main command, kept under its old name.

The command itself is the lab's: :mod:`mll_lab.run` (``python -m mll_lab.run``, the same as ``mll-jax bench``).
This module only runs it as a program; importing it does nothing, and the library never imports the lab.  It is
kept for one release; use ``python -m mll_lab.run`` or ``mll-jax bench``.
"""

import runpy

if __name__ == "__main__":
    runpy.run_module("mll_lab.run", run_name="__main__", alter_sys=True,
                     init_globals={"RUN_AS": "python -m mll_jax.run"})
