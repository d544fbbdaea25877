"""The ``mll-jax`` program: the command table, help, and ``main`` (dispatch, flag parsing, errors to exit codes)."""

from __future__ import annotations

import os
import sys
import warnings
from typing import Callable, Sequence

from absl import app, flags, logging

from mll_jax.errors import FAILURE_EXIT, USAGE_EXIT, MLLError, UsageError, exit_code

from .classify import cmd_classify
from .commands import cmd_bench, cmd_hub_add, cmd_hub_list, cmd_hub_remove, cmd_label, cmd_sdag_build
from .common import Command, use_compile_cache
from .flags import (FLAGS, define_bench_flags, define_classify_flags, define_hub_add_flags, define_hub_list_flags,
                    define_hub_remove_flags, define_label_flags, define_sdag_build_flags)

__all__ = ["COMMANDS", "GROUPS", "HELP_FLAGS", "top_help", "command_help", "main", "exit_with", "entry_point"]

COMMANDS: dict[str, Command] = {c.name: c for c in [
    Command("sdag build", "create or extend the system's SDAG (WordNet nodes) and its node images",
            "", define_sdag_build_flags, cmd_sdag_build),
    Command("hub add", "register a model: a shipped expert, hf:<name or dir> or vlm:<CLIP name or dir>", "MODEL",
            define_hub_add_flags, cmd_hub_add),
    Command("hub list", "list the hub's models (id, kind, heads, labelled / stale / unlabelled)", "",
            define_hub_list_flags, cmd_hub_list),
    Command("hub remove", "unregister models and delete their labels", "ID...", define_hub_remove_flags,
            cmd_hub_remove),
    Command("label", "label every unlabelled or stale model (only new node data is run; resumable)", "",
            define_label_flags, cmd_label),
    Command("classify", "zero-shot classify images for a task given by class names", "PATH...",
            define_classify_flags, cmd_classify),
    Command("bench", "run the built-in benchmarks (default: the offline Fashion-MNIST one)", "",
            define_bench_flags, cmd_bench),
]}

GROUPS = sorted({n.split()[0] for n in COMMANDS if " " in n})
HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull", "-help", "-helpfull")


# ---------------------------------------------------------------------------------------------- help and main

def flag_lines(cmd: Command, prog: str) -> list[str]:
    fv = flags.FlagValues()
    cmd.define(fv, module_name=cmd.name)
    lines = []
    for name in sorted(fv, key=lambda n: (n != "root", n)):
        f = fv[name]
        if name != f.name or name in ("progress", "traceback"):  # short aliases; common flags (listed once)
            continue
        default = "" if f.default is None or f.default == [] else f" (default: {f.default_as_str})"
        lines.append(f"    --{name}: {f.help}{default}")
    return lines


def top_help(prog: str) -> str:
    out = [f"usage: {prog} COMMAND [flags] [args]", "",
           "MLL: turn a hub of pretrained classifiers into a zero-shot classifier for any class names.", "",
           "commands:"]
    for cmd in COMMANDS.values():
        out.append(f"  {prog} {cmd.name} [flags] {cmd.args}".rstrip())
        out.append(f"      {cmd.summary}")
        if cmd.name == "bench":
            out.append(f"      (flags: {prog} bench --help)")
        else:
            out += flag_lines(cmd, prog)
        out.append("")
    out.append("every command but bench: --[no]progress (progress bars), --traceback (full traceback on failure)")
    out.append(f"{prog} COMMAND --help: the flags of one command.  Exit codes: 0 ok, 2 bad usage or input, "
               "3 damaged data on disk, 4 classify skipped unreadable image files, 1 other failure.")
    return "\n".join(out)


def command_help(cmd: Command, cprog: str, full: bool = False) -> str:
    out = [f"usage: {cprog} [flags] {cmd.args}".rstrip(), "", cmd.summary, "", "flags:"]
    fv = flags.FlagValues()
    cmd.define(fv, module_name=cmd.name)
    out += [ln for ln in fv.module_help(cmd.name).splitlines() if ln.strip() and ln.strip() != f"{cmd.name}:"]
    if full:
        cmd.define(FLAGS, module_name=cmd.name)
        out += ["", "all flags (absl included):", FLAGS.get_help()]
    return "\n".join(out)


def print_error(prog: str, msg: str) -> None:
    line = " ".join(str(msg).split())
    print(f"{prog}: error: {line}", file=sys.stderr)


def split_command(argv: Sequence[str]) -> tuple[Command | None, list[str]]:
    """``(command, rest)`` from ``argv[1:]``: the command words come first."""
    args = list(argv[1:])
    if not args or args[0].startswith("-"):
        return None, args
    word = args[0]
    if word in GROUPS:
        if len(args) < 2 or args[1].startswith("-"):
            subs = [n.split()[1] for n in COMMANDS if n.startswith(word + " ")]
            raise UsageError(f"'{word}' needs a sub-command: {', '.join(f'{word} {s}' for s in subs)}")
        name = f"{word} {args[1]}"
        rest = args[2:]
    else:
        name, rest = word, args[1:]
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}; commands: {', '.join(COMMANDS)}")
    return COMMANDS[name], rest


def format_warning(message, category, filename, lineno, line=None):
    return f"mll-jax: warning: {message}\n"


def main(argv: Sequence[str] | None = None, *, prog: str = "mll-jax", command_prog: str | None = None) -> int:
    """Run one command (``argv``: ``[program, command words..., flags and args...]``); returns the exit code
    (0 ok, 2 bad usage or input, 1 other failure).  ``command_prog``: the program name in messages and help
    (default ``"<prog> <command>"``)."""
    argv = list(sys.argv if argv is None else argv)
    try:
        cmd, rest = split_command(argv)
    except UsageError as e:
        print_error(prog, e)
        return USAGE_EXIT
    before_dashes = rest[:rest.index("--")] if "--" in rest else rest
    wants_help = [a for a in before_dashes if a in HELP_FLAGS]
    if cmd is None:
        if wants_help:
            print(top_help(prog))
            return 0
        print_error(prog, f"no command given; commands: {', '.join(COMMANDS)} ({prog} --help)")
        return USAGE_EXIT
    cprog = f"{prog} {cmd.name}" if command_prog is None else (command_prog or prog)
    if wants_help:
        print(command_help(cmd, cprog, full=any("full" in a for a in wants_help)))
        return 0
    cmd.define(FLAGS, module_name=cmd.name)
    if cmd.name != "bench":
        flags.mark_flag_as_required("root", flag_values=FLAGS)

    def parse(args):
        try:
            FLAGS.unparse_flags()
            return FLAGS(args)
        except flags.Error as e:
            print_error(cprog, e)
            sys.exit(USAGE_EXIT)

    def run_main(args):
        old_format = warnings.formatwarning
        warnings.formatwarning = format_warning
        try:
            if cmd.name != "bench":
                if not FLAGS["verbosity"].present:
                    logging.set_verbosity(logging.WARNING)
            if "compile_cache" in FLAGS:
                use_compile_cache()
            return cmd.run(args) or 0
        except MLLError as e:  # bad input (2), damaged data (3), a missing install or a failed peer (1)
            if e.exit_code == FAILURE_EXIT and "traceback" in FLAGS and FLAGS.traceback:
                raise
            print_error(cprog, e)
            return exit_code(e)
        except (UsageError, app.UsageError, ValueError, FileNotFoundError, NotADirectoryError) as e:
            print_error(cprog, e)
            return USAGE_EXIT
        except KeyboardInterrupt:
            print_error(cprog, "interrupted")
            return 130
        except Exception as e:  # noqa: BLE001  one line; --traceback shows everything
            if "traceback" in FLAGS and FLAGS.traceback:
                raise
            print_error(cprog, f"{type(e).__name__}: {e}" + ("" if "traceback" not in FLAGS else
                                                        " (--traceback shows the full traceback)"))
            return FAILURE_EXIT
        finally:
            warnings.formatwarning = old_format

    try:
        app.run(run_main, argv=[cprog] + rest, flags_parser=parse)
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else FAILURE_EXIT)
    return 0


def exit_with(code_fn: Callable[[], int]) -> None:
    """``sys.exit(code_fn())``, quietly when stdout is a closed pipe (``mll-jax --help | head``)."""
    try:
        code = code_fn()
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at interpreter exit
        code = FAILURE_EXIT
    sys.exit(code)


def entry_point() -> None:
    """Console script ``mll-jax``."""
    exit_with(lambda: main(sys.argv))
