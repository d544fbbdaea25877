"""Result files with provenance: every benchmark writes ``results/<name>.json`` and ``results/<name>.md``.

The JSON holds the numbers and a ``provenance`` block (commit, date, machine, load, command); the Markdown file is a
short table for people, with the same provenance in a footer.  The README quotes these files and links to them.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import platform
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

__all__ = ["results_dir", "provenance", "markdown_table", "write_results", "record_report"]

_REPO = Path(__file__).resolve().parent.parent


def results_dir() -> Path:
    """``$MLL_RESULTS_DIR`` or the repository's ``results/`` folder."""
    return Path(os.environ.get("MLL_RESULTS_DIR") or _REPO / "results")


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(_REPO), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def _devices() -> list[str]:
    if "jax" not in sys.modules:  # do not import JAX just to describe the machine
        return []
    import jax

    return [f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()]


def provenance(command: Sequence[str] | None = None, *, load_at_start: Sequence[float] | None = None) -> dict:
    """Where and how a result was measured: commit (and whether the tree had changes outside ``results/``), UTC date, machine, load
    averages (at the start, if given, and now) and the command line."""
    # results/ is what benchmarks write (one after another): only changes outside it count as a changed tree
    dirty = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results")
    load_now = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return {
        "commit": _git("rev-parse", "HEAD"),
        "tree_changed": bool(dirty) if dirty is not None else None,
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": {"cpu": _cpu_model(), "cores": os.cpu_count(), "memory_gib": _memory_gib(),
                    "platform": platform.platform(), "python": platform.python_version(), "devices": _devices()},
        "load": {"start": None if load_at_start is None else [round(x, 2) for x in load_at_start],
                 "end": None if load_now is None else [round(x, 2) for x in load_now]},
        "command": shlex.join(list(sys.argv if command is None else command)),
    }


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub Markdown table (floats as given: format them before)."""
    def cell(v):
        return str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def write_results(name: str, data: Mapping[str, Any], markdown: str, *, title: str | None = None,
                  command: Sequence[str] | None = None, load_at_start: Sequence[float] | None = None,
                  directory: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """Write ``<directory>/<name>.json`` (``data`` plus ``provenance``) and ``<name>.md`` (``markdown`` under a
    title, provenance as a footer), each atomically.  Returns both paths."""
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"bad results name {name!r}")
    out = Path(directory) if directory is not None else results_dir()
    out.mkdir(parents=True, exist_ok=True)
    prov = provenance(command, load_at_start=load_at_start)
    doc = {"name": name, **dict(data), "provenance": prov}
    m = prov["machine"]
    footer = (f"\n\nMeasured {prov['date']} on commit `{(prov['commit'] or 'unknown')[:12]}`"
              f"{' (with uncommitted changes)' if prov['tree_changed'] else ''}; {m['cores']} cores ({m['cpu']}), "
              f"{m['memory_gib']} GiB" + (f", devices {', '.join(m['devices'])}" if m["devices"] else "")
              + f"; load {prov['load']['start']} -> {prov['load']['end']}.\nCommand: `{prov['command']}`\n")
    md = f"# {title or name}\n\n{markdown.strip()}{footer}"
    paths = []
    for suffix, text in ((".json", json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"), (".md", md)):
        p = out / f"{name}{suffix}"
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
        paths.append(p)
    return paths[0], paths[1]


class _Tee(io.TextIOBase):
    """Writes through to ``out`` and keeps a copy."""

    def __init__(self, out):
        self.out, self.buf = out, io.StringIO()

    def write(self, text):
        self.buf.write(text)
        return self.out.write(text)

    def flush(self):
        self.out.flush()


def record_report(name: str, title: str, run: Callable[[], Any], *, flags: Mapping[str, Any] | None = None
                  ) -> tuple[Path, Path]:
    """Run ``run()`` echoing what it prints, then write ``results/<name>.*``: the flags and the printed report (the
    numbers as printed), as a code block in the Markdown file, with the load at the start."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        run()
    report = tee.buf.getvalue().strip("\n")
    return write_results(name, {"flags": dict(flags or {}), "report": report.splitlines()},
                         "```\n" + report + "\n```", title=title, load_at_start=load)
