"""What every ``mll-jax`` command shares: the command record, opening the system at ``--root``, flag parsing
helpers."""

from __future__ import annotations

import contextlib
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from mll_jax.errors import UsageError
from mll_jax.locking import writer_lock
from mll_jax.system import MLL
from mll_jax.utils import compile_cache
from mll_jax.wordnet import synset_from_wnid

from .flags import FLAGS

__all__ = ["Command", "use_compile_cache", "open_system", "no_args", "status", "parse_beta", "check_wnids", "lock_wait",
           "writing"]


@dataclass(frozen=True)
class Command:
    name: str
    summary: str
    args: str  # positional arguments in the usage line
    define: Callable[..., None]
    run: Callable[[Sequence[str]], int]


def use_compile_cache() -> None:
    """Turn on JAX's persistent compilation cache as ``--compile_cache`` says (a directory that cannot be created
    only turns it off, with a warning)."""
    value = str(FLAGS.compile_cache or "none").strip()
    if value.lower() in ("none", "off", ""):
        return
    try:
        compile_cache(None if value.lower() == "auto" else value)
    except OSError as e:
        print(f"warning: compile cache off ({e}); pass --compile_cache=none to silence this", file=sys.stderr)


def open_system(create_sdag=None):
    """Open the system at --root with the --progress setting (not saved in its config)."""
    root = Path(FLAGS.root).expanduser().absolute()  # the label store (orbax) needs absolute paths
    if create_sdag is None:
        if not root.exists():
            raise UsageError(f"--root={root} does not exist: create the system with `mll-jax sdag build --root={root} "
                         "--wnids=...` (or --roots=...)")
        if not (root / "sdag" / "sdag.json").is_file():
            raise UsageError(f"--root={root} is not an MLL system directory (no sdag/sdag.json): create it with "
                         f"`mll-jax sdag build --root={root} ...`")
    mll = MLL.open(root, sdag=create_sdag)
    return mll.with_config(progress=bool(FLAGS.progress))


def no_args(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise UsageError(f"unexpected arguments {list(argv[1:])} (flags are written --name=value)")


def status(msg: str) -> None:
    """A progress line on stderr (with --progress)."""
    if FLAGS.progress:
        print(msg, file=sys.stderr, flush=True)


def parse_beta(value):
    if value is None or str(value).strip().lower() in ("none", "inf"):
        return None
    try:
        b = float(value)
    except ValueError:
        raise UsageError(f"--beta must be a number or 'none', got {value!r}") from None
    if not math.isfinite(b):
        raise UsageError(f"--beta must be finite or 'none', got {value!r}")
    return b


def check_wnids(wnids: Sequence[str], flag: str) -> list[str]:
    out = [w.strip() for w in wnids if w.strip()]
    if not out:
        raise UsageError(f"--{flag} is empty")
    for w in out:
        try:
            synset_from_wnid(w)
        except KeyError as e:
            raise UsageError(f"--{flag}: {e.args[0] if e.args else e}") from None
    return out


def lock_wait(value: str | None = None):
    """``--lock_wait`` as :func:`mll_jax.locking.writer_lock`'s ``wait``: True (forever), False (no) or seconds."""
    v = str(FLAGS.lock_wait if value is None else value).strip().lower()
    if v in ("forever", "yes", "true"):
        return True
    if v in ("no", "false", "0"):
        return False
    try:
        seconds = float(v)
    except ValueError:
        seconds = -1.0
    if not math.isfinite(seconds) or seconds < 0:
        raise UsageError(f"--lock_wait={value if value is not None else FLAGS.lock_wait}: give 'forever', 'no' or a "
                         "number of seconds")
    return seconds


@contextlib.contextmanager
def writing(what: str, processes=None, *, create: bool = False):
    """Hold the writer lock of ``--root`` (``create``: make the directory first, for a new system)."""
    root = Path(FLAGS.root).expanduser().absolute()
    wait = lock_wait()
    if create:
        root.mkdir(parents=True, exist_ok=True)
    with writer_lock(root, wait=wait, what=what, processes=processes):
        yield

