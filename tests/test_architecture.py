"""The package's architecture, checked from the source (docs/ARCHITECTURE.md describes it).

* every module of ``mll_jax`` has a layer, and imports only from its own layer or below;
* no import cycles between modules (module-level imports);
* no ``mll_jax`` import inside a function (the usual way to hide a cycle);
* no private name (``_x``) of one module imported or read by another module, here or in the lab, tests,
  benchmarks and experiments;
* public JAX APIs only (no ``jax._src``);
* the library never imports the lab (``mll_lab``), tests and benchmarks never import each other;
* no module over 600 lines.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAX_LINES = 600

#: The one private JAX access, and why: JAX exposes no public accessor for the ``jax.distributed`` runtime's
#: key-value client (``jax.distributed`` exports ``initialize``, ``is_initialized`` and ``shutdown``; JAX's own
#: ``multihost_utils`` and orbax read the same private state).  It stays inside one documented function.
PRIVATE_JAX_ALLOWED = {("mll_jax/distributed.py", "coordination_client")}

#: Layers, bottom first; a module belongs to the layer of its longest matching prefix.
LAYERS = [
    ("base", ["mll_jax.errors", "mll_jax.config", "mll_jax.utils", "mll_jax.names", "mll_jax.locking"]),
    ("data", ["mll_jax.wordnet", "mll_jax.sdag", "mll_jax.sdag_sources", "mll_jax.images", "mll_jax.samples"]),
    ("numerics", ["mll_jax.chco", "mll_jax.projection", "mll_jax.text", "mll_jax.models", "mll_jax.clip_patch",
                  "mll_jax.vlm.core", "mll_jax.vlm.models", "mll_jax.vlm.dual_encoder",
                  "mll_jax.expert_fingerprint"]),
    ("hub, labelling", ["mll_jax.hub", "mll_jax.labelling", "mll_jax.packing", "mll_jax.distributed",
                        "mll_jax.vlm.labels", "mll_jax.locking", "mll_jax.label_upgrade"]),
    ("selection", ["mll_jax.selection", "mll_jax.baselines", "mll_jax.vlm.select", "mll_jax.vlm.expert_style"]),
    ("reuse", ["mll_jax.reuse"]),
    ("system", ["mll_jax.system", "mll_jax.families", "mll_jax.classifier", "mll_jax.vlm_classifier",
                "mll_jax.vlm"]),
    ("cli", ["mll_jax.cli", "mll_jax.run"]),
]


def _modules(package: str) -> dict[str, Path]:
    out = {}
    for p in sorted((REPO / package).rglob("*.py")):
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = p
    return out


MODULES = _modules("mll_jax")


def layer_of(module: str) -> int:
    best, best_len = None, -1
    for i, (_, prefixes) in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best_len:
                best, best_len = i, len(pre)
    return best


def _resolve(node: ast.ImportFrom | ast.Import, module: str, is_pkg: bool) -> list[tuple[str, str | None]]:
    """(imported module, imported name or None) pairs of one import statement."""
    if isinstance(node, ast.Import):
        return [(a.name, None) for a in node.names]
    if node.level:
        base = module.split(".") if is_pkg else module.split(".")[:-1]
        base = base[:len(base) - (node.level - 1)]
        mod = ".".join(base + ([node.module] if node.module else []))
    else:
        mod = node.module or ""
    out = []
    for a in node.names:
        sub = f"{mod}.{a.name}"
        out.append((sub, None) if sub in MODULES else (mod, a.name))
    return out


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imports(path: Path, module: str):
    """(imported module, name, line, inside a function) for every import in a file."""
    tree = _parse(path)
    is_pkg = path.name == "__init__.py"
    func_nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            for sub in ast.walk(node):
                if sub is not node:
                    func_nodes.add(id(sub))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for mod, name in _resolve(node, module, is_pkg):
                yield mod, name, node.lineno, id(node) in func_nodes


def _owner(mod: str) -> str | None:
    """The mll_jax module an imported dotted name refers to (longest known prefix)."""
    parts = mod.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in MODULES:
            return cand
    return None


def test_every_module_has_a_layer():
    missing = [m for m in MODULES if m != "mll_jax" and layer_of(m) is None]
    assert not missing, f"modules without a layer (add them to LAYERS and docs/ARCHITECTURE.md): {missing}"


def test_layers_import_downward_only():
    bad = []
    for m, p in MODULES.items():
        if m == "mll_jax":
            continue
        for mod, _, line, _ in _imports(p, m):
            dep = _owner(mod)
            if dep is None or dep == "mll_jax" or dep == m:
                continue
            if layer_of(dep) is None or layer_of(m) is None:
                continue  # reported by test_every_module_has_a_layer
            if layer_of(dep) > layer_of(m):
                bad.append(f"{p.relative_to(REPO)}:{line}: {m} ({LAYERS[layer_of(m)][0]}) imports {dep} "
                           f"({LAYERS[layer_of(dep)][0]})")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_no_function_local_package_imports():
    bad = []
    for m, p in MODULES.items():
        for mod, _, line, local in _imports(p, m):
            if local and (mod == "mll_jax" or mod.startswith(("mll_jax.", "mll_lab"))):
                bad.append(f"{p.relative_to(REPO)}:{line}: imports {mod} inside a function")
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    graph = {m: set() for m in MODULES}
    for m, p in MODULES.items():
        for mod, _, _, local in _imports(p, m):
            dep = _owner(mod)
            if dep and dep != m and not local:
                # a package's __init__ re-exporting its own modules is not a cycle with them
                if m == dep.rsplit(".", 1)[0] or dep == "mll_jax":
                    continue
                graph[m].add(dep)
    color, stack, cycles = {}, [], []

    def visit(u):
        color[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if color.get(v) == 1:
                cycles.append(stack[stack.index(v):] + [v])
            elif color.get(v) is None:
                visit(v)
        stack.pop()
        color[u] = 2

    for m in sorted(graph):
        if color.get(m) is None:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def _all_sources():
    for folder in ("mll_jax", "mll_lab", "tests", "benchmarks", "experiments"):
        for p in sorted((REPO / folder).rglob("*.py")):
            parts = list(p.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), p


def test_no_private_names_across_modules():
    bad = []
    for m, p in _all_sources():
        tree = _parse(p)
        aliases = {}  # local name -> mll_jax module
        for mod, name, line, _ in _imports(p, m):
            owner = _owner(mod)
            if owner is None or owner == m:
                continue
            if name is not None and name.startswith("_") and not name.startswith("__"):
                bad.append(f"{p.relative_to(REPO)}:{line}: imports private {owner}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    if _owner(a.name):
                        aliases[a.asname or a.name.split(".")[0]] = a.asname and a.name or a.name.split(".")[0]
            elif isinstance(node, ast.ImportFrom):
                for mod, name in _resolve(node, m, p.name == "__init__.py"):
                    if name is None and mod in MODULES:
                        aliases[next(a.asname or a.name for a in node.names if mod.endswith(a.name))] = mod
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")):
                base = node.value
                dotted = []
                while isinstance(base, ast.Attribute):
                    dotted.append(base.attr)
                    base = base.value
                if isinstance(base, ast.Name) and base.id in aliases:
                    target = ".".join([aliases[base.id]] + dotted[::-1])
                    if _owner(target) and _owner(target) != m:
                        bad.append(f"{p.relative_to(REPO)}:{node.lineno}: reads private {target}.{node.attr}")
    assert not bad, "\n".join(bad)


def test_public_jax_and_separation_of_library_lab_tests_benchmarks():
    bad = []
    for m, p in _all_sources():
        text = p.read_text(encoding="utf-8")
        folder = p.relative_to(REPO).parts[0]
        tree = _parse(p)
        allowed_lines = set()
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef) and (str(p.relative_to(REPO)), fn.name) in PRIVATE_JAX_ALLOWED:
                allowed_lines |= {n.lineno for n in ast.walk(fn) if hasattr(n, "lineno")}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for n in names:
                    if n.startswith("jax._src") and node.lineno not in allowed_lines:
                        bad.append(f"{p.relative_to(REPO)}:{node.lineno}: imports {n} (private JAX)")
                    if folder == "mll_jax" and n.startswith("mll_lab"):
                        bad.append(f"{p.relative_to(REPO)}:{node.lineno}: the library imports the lab ({n})")
                    if folder == "tests" and n.split(".")[0] == "benchmarks":
                        bad.append(f"{p.relative_to(REPO)}:{node.lineno}: a test imports a benchmark ({n})")
                    if folder == "benchmarks" and n.split(".")[0] == "tests":
                        bad.append(f"{p.relative_to(REPO)}:{node.lineno}: a benchmark imports a test ({n})")
        if folder == "tests" and p.name != Path(__file__).name and "benchmarks/" in text and "runpy" in text:
            bad.append(f"{p.relative_to(REPO)}: a test executes a benchmark file")
        if folder == "benchmarks" and "sys.path" in text and "tests" in text:
            bad.append(f"{p.relative_to(REPO)}: a benchmark puts tests/ on sys.path")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", ["mll_jax", "mll_lab"])
def test_modules_stay_readable(package):
    long = {str(p.relative_to(REPO)): n for p in (REPO / package).rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines (split them into packages of one-concept modules): {long}"


def test_the_checks_catch_violations(tmp_path, monkeypatch):
    """The checks themselves: a hand-made upward import, local import and private import are reported."""
    src = ("from mll_jax.system import MLL\nfrom mll_jax.hub import _secret\n"
           "def f():\n    import mll_jax.sdag\n")
    p = tmp_path / "x.py"
    p.write_text(src)
    found = list(_imports(p, "mll_jax.utils"))
    assert ("mll_jax.system", "MLL", 1, False) in found
    assert ("mll_jax.hub", "_secret", 2, False) in found
    assert ("mll_jax.sdag", None, 4, True) in found
    assert layer_of("mll_jax.system") > layer_of("mll_jax.utils")
    assert layer_of("mll_jax.chco.pgd") == layer_of("mll_jax.chco")
