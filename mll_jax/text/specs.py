"""Class specs: a class name with, optionally, the user's WordNet synset and a description.

The user decides where the name alone is not enough:

* ``"kitty=n02121620"`` or ``"kitty=cat.n.01"``: the class "kitty" IS that synset (no lemma or text matching);
* ``"n02084071"`` or ``"dog.n.01"`` alone: the class is that synset, named by its first lemma ("dog");
* ``"jaguar: the big cat of Central and South America"``: the description is embedded with the name (``"jaguar:
  the big cat..."``) to rank the name's senses and the nodes.

:func:`parse_class_specs` reads a comma-separated list or the text of a class file; :func:`read_class_file`
reads a file: JSON (a list of names or of objects ``{"name", "wnid", "description"}``, where ``wnid`` may also
be a synset name), CSV with a header naming the columns ``name`` [, ``wnid``] [, ``description``], or plain text
with one spec per line (``#`` starts a comment).  Unknown wnids or synset names raise
:class:`~mll_jax.errors.ClassNamesError` with the reason; so do empty or duplicate names.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import NamedTuple, Sequence

from mll_jax.errors import ClassNamesError
from mll_jax.names import check_class_names
from mll_jax.wordnet import get_wordnet, is_synset_name, is_wnid, synset_from_ref, wnid

__all__ = ["ClassSpec", "parse_class_spec", "parse_class_specs", "read_class_file", "resolve_specs"]


class ClassSpec(NamedTuple):
    """One task class: ``name`` (what is predicted), ``wnid`` (the user's synset, or None: matched from the
    name) and ``description`` (extra text for matching, or None)."""

    name: str
    wnid: str | None = None
    description: str | None = None

    def query(self) -> str:
        """The text embedded for this class: the name, or ``"<name>: <description>"``."""
        return f"{self.name}: {self.description}" if self.description else self.name


def _synset_wnid(ref: str, wn, where: str) -> str:
    try:
        return wnid(synset_from_ref(ref, wn))
    except KeyError as e:
        raise ClassNamesError(f"{where}: {e.args[0]}") from None


def parse_class_spec(text: str, wn=None) -> ClassSpec:
    """One spec: ``"name"``, ``"name=wnid"``, ``"name=synset.n.NN"``, a bare wnid / synset name, or
    ``"name: description"`` (see the module docstring)."""
    if not isinstance(text, str) or not text.strip():
        raise ClassNamesError(f"empty class spec {text!r}")
    t = " ".join(text.split())
    ref = None
    if "=" in t:
        t, ref = (x.strip() for x in t.split("=", 1))
        if ":" in ref:  # "name=wnid: description"
            ref, desc = (x.strip() for x in ref.split(":", 1))
            t = f"{t}: {desc}"
        if not ref:
            raise ClassNamesError(f"class spec {text!r}: nothing after '='; give a wnid or a synset name")
    name, desc = t, None
    if ":" in t:
        name, desc = (x.strip() for x in t.split(":", 1))
        desc = desc or None
    if not name:
        raise ClassNamesError(f"class spec {text!r} has no name")
    if ref is None and (is_wnid(name) or is_synset_name(name.lower())):  # a bare synset: named by its lemma
        w = _synset_wnid(name, get_wordnet() if wn is None else wn, f"class {name!r}")
        lemma = synset_from_ref(w, get_wordnet() if wn is None else wn).lemmas()[0].name()
        return ClassSpec(lemma.replace("_", " "), w, desc)
    if ref is not None:
        return ClassSpec(name, _synset_wnid(ref, get_wordnet() if wn is None else wn, f"class {name!r}"), desc)
    return ClassSpec(name, None, desc)


def _split_list(text: str) -> list[str]:
    """One spec per non-blank line (``#`` comments), or per entry of a comma-separated list, where an empty entry
    (``"cat,,dog"``) is an error named by its position."""
    if "\n" in text.strip():
        lines = [ln.split("#", 1)[0].strip() for ln in text.splitlines()]
        return [ln for ln in lines if ln]
    return [p.strip() for p in check_class_names(text.split(","))]


def parse_class_specs(text: str, wn=None) -> list[ClassSpec]:
    """Specs from text: a JSON list, a CSV table with a ``name`` header, one spec per line, or a comma-separated
    list (``"dog, kitty=n02121620, n02958343"``).  Names are checked like every task's class names."""
    if not isinstance(text, str):
        raise ClassNamesError(f"class specs must be text, got {type(text).__name__}")
    s = text.strip()
    if s.startswith("[") or s.startswith("{"):
        specs = _from_json(s, wn)
    elif s.splitlines() and s.splitlines()[0].strip().lower().replace(" ", "").startswith("name,"):
        specs = _from_csv(s, wn)
    else:
        specs = [parse_class_spec(p, wn) for p in _split_list(s)]
    check_class_names([sp.name for sp in specs])
    return specs


def _from_json(s: str, wn) -> list[ClassSpec]:
    try:
        data = json.loads(s)
    except ValueError as e:
        raise ClassNamesError(f"class list is not valid JSON: {e}") from None
    if isinstance(data, dict):
        data = data.get("classes", data)
    if not isinstance(data, list):
        raise ClassNamesError("a JSON class list must be a list (or {\"classes\": [...]})")
    out = []
    for i, item in enumerate(data):
        if isinstance(item, str):
            out.append(parse_class_spec(item, wn))
        elif isinstance(item, dict) and isinstance(item.get("name"), str):
            out.append(_record(item["name"], item.get("wnid") or item.get("synset"), item.get("description"), wn))
        else:
            raise ClassNamesError(f"class {i} in the JSON list is {item!r}: expected a name or an object "
                                  "with 'name' (and optional 'wnid', 'description')")
    return out


def _from_csv(s: str, wn) -> list[ClassSpec]:
    rows = list(csv.DictReader(io.StringIO(s), skipinitialspace=True))
    out = []
    for row in rows:
        row = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items()}
        out.append(_record(row.get("name", ""), row.get("wnid") or row.get("synset"), row.get("description"), wn))
    return out


def _record(name: str, ref: str | None, description: str | None, wn) -> ClassSpec:
    name = " ".join(str(name).split())
    if not name:
        raise ClassNamesError("a class record has an empty name")
    if ref:
        return ClassSpec(name, _synset_wnid(str(ref).strip(), get_wordnet() if wn is None else wn,
                                            f"class {name!r}"), description or None)
    return ClassSpec(name, None, description or None)


def read_class_file(path: str | os.PathLike, wn=None) -> list[ClassSpec]:
    """Specs from a ``.json``, ``.csv`` or text file (see :func:`parse_class_specs`)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ClassNamesError(f"cannot read class file {p}: {e.strerror or e}") from None
    if p.suffix.lower() == ".csv":
        specs = _from_csv(text.strip(), wn)
        check_class_names([sp.name for sp in specs])
        return specs
    return parse_class_specs(text, wn)


def resolve_specs(class_names: Sequence[str], specs: Sequence[ClassSpec] | None, wn) -> list[ClassSpec]:
    """One spec per class name: the given ``specs`` (their names must equal ``class_names``), else a plain
    name, or the synset a bare wnid / synset name refers to (the name is kept as given)."""
    if specs is not None:
        specs = list(specs)
        if [s.name for s in specs] != list(class_names):
            raise ClassNamesError("class specs do not belong to these class names")
        return specs
    out = []
    for c in class_names:
        if is_wnid(c) or is_synset_name(c.lower()):
            out.append(ClassSpec(c, _synset_wnid(c, wn, f"class {c!r}")))
        else:
            out.append(ClassSpec(c))
    return out
