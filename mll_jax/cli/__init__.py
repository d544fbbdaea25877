"""``mll-jax``: the command line of the MLL system, a thin user of :class:`mll_jax.system.MLL`.

A system lives in one directory (``--root``): its SDAG (node images), its model hub, its labels and its
configuration (see :mod:`mll_jax.system`).  The commands::

    mll-jax sdag build --root=DIR (--roots=WNID,... | --wnids=WNID,... [--close_hypernyms])
                       [--images=FOLDER --per_node=50 --image_size=224]
    mll-jax hub add    --root=DIR MODEL [--model_id=ID] [--resolution=PX]   # MODEL: a shipped expert or hf:<name|dir>
    mll-jax hub list   --root=DIR
    mll-jax hub remove --root=DIR ID...
    mll-jax label      --root=DIR [--models=ID,...] [--recompute]
                       [--num_processes=N --process_id=I --coordinator_address=HOST:PORT | --cluster]
    mll-jax classify   --root=DIR --classes="tabby cat,golden retriever" PATH... [--output=FILE.csv|.json]
                       [--explain] [--save_classifier=FILE | --classifier=FILE] [--k --beta --scorer --image_size]
    mll-jax bench      [flags]        # the built-in benchmarks (same as ``python -m mll_jax.run``)

Flags are absl flags, defined here by the command that parses them (never when a library module is imported).
Exit codes: 0 success; 2 bad usage or bad input (one line ``mll-jax <cmd>: error: ...`` on stderr); 3 damaged data
on disk (a corrupt label store or checkpoint: the message names the file and how to recover); 4 ``classify`` finished
but skipped image files it could not read (each listed on stderr and marked ``(skipped)`` in its output); 1 any
other failure (one line; ``--traceback`` shows the full traceback).

Commands that change ``--root`` (``sdag build``, ``hub add``, ``hub remove``, ``label``) hold its writer lock
(:func:`mll_jax.locking.writer_lock`); another writer waits for it (``--lock_wait=forever``, the default), stops at
once (``no``) or after ``SECONDS``.  ``classify`` only reads.

Modules: :mod:`~mll_jax.cli.flags` (flag definitions), :mod:`~mll_jax.cli.common` (opening the system, the lock,
flag helpers), :mod:`~mll_jax.cli.commands` (building and maintaining a system), :mod:`~mll_jax.cli.classify`,
:mod:`~mll_jax.cli.app` (the command table, help, ``main``).
"""

from mll_jax.errors import DATA_EXIT, FAILURE_EXIT, SKIPPED_EXIT, USAGE_EXIT  # noqa: F401  (re-exported)

from .app import COMMANDS, command_help, entry_point, exit_with, main, top_help  # noqa: F401
from .classify import cmd_classify, json_ready  # noqa: F401
from .commands import cmd_bench, cmd_hub_add, cmd_hub_list, cmd_hub_remove, cmd_label, cmd_sdag_build  # noqa: F401
from .flags import (FLAGS, define_bench_flags, define_classify_flags, define_hub_add_flags,  # noqa: F401
                    define_hub_list_flags, define_hub_remove_flags, define_label_flags, define_sdag_build_flags)

__all__ = ["COMMANDS", "main", "entry_point", "exit_with", "top_help", "command_help"]
