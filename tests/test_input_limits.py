"""Hostile class names at the API edge (issue 23, item 4): unicode normalisation, control and invisible
characters, very long names, too many classes, endless iterables; a fuzz test: every input either passes with
the documented invariants or raises ClassNamesError, never anything else, never a hang."""

from __future__ import annotations

import itertools
import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mll_jax.errors import ClassNamesError
from mll_jax.names import MAX_CLASS_NAME_LENGTH, MAX_CLASSES, check_class_names


def test_visually_equal_names_are_equal_after_nfc():
    composed, decomposed = "caf\u00e9", "cafe\u0301"
    assert composed != decomposed
    assert check_class_names([decomposed]) == [composed]
    with pytest.raises(ClassNamesError, match="duplicate class names"):
        check_class_names([composed, decomposed.upper()])


@pytest.mark.parametrize("bad, what", [
    ("cat\x00", "control character"), ("c\x1bat", "control character"), ("dog\x7f", "control character"),
    ("zero\u200bwidth", "invisible format character"), ("evil\u202etxt", "invisible format character"),
    ("priv\ue000", "private-use character"), ("lone\ud800", "lone surrogate"),
])
def test_control_and_invisible_characters_are_refused(bad, what):
    with pytest.raises(ClassNamesError, match=f"class name 1 .*{what}"):
        check_class_names(["ok", bad])


def test_whitespace_is_collapsed_and_joiners_kept():
    joined = "\u0915\u094d\u200d\u0937"  # Devanagari with a zero-width joiner
    assert check_class_names(["  tabby\t\ncat  ", joined]) == ["tabby cat", joined]
    with pytest.raises(ClassNamesError, match="class name 0 is empty"):
        check_class_names(["\t\n \u3000"])


def test_length_limit():
    ok = "x" * MAX_CLASS_NAME_LENGTH
    assert check_class_names([ok]) == [ok]
    with pytest.raises(ClassNamesError, match=f"has {MAX_CLASS_NAME_LENGTH + 1} characters; at most "
                                              f"{MAX_CLASS_NAME_LENGTH}"):
        check_class_names([ok + "y"])
    with pytest.raises(ClassNamesError, match="1,000,000 characters") as err:
        check_class_names(["a" * 1_000_000])
    assert len(str(err.value)) < 300  # the message shows a preview, not the name


def test_class_count_limit_and_endless_input():
    names = [f"class {i}" for i in range(MAX_CLASSES)]
    assert len(check_class_names(names)) == MAX_CLASSES
    with pytest.raises(ClassNamesError, match="10,000 class names given: a task may have at most 5,000"):
        check_class_names([f"class {i}" for i in range(10_000)])
    with pytest.raises(ClassNamesError, match="more than 5,000 class names"):
        check_class_names(f"c{i}" for i in itertools.count())  # endless: refused, no hang
    with pytest.raises(ClassNamesError, match="got bytes"):
        check_class_names(b"cat,dog")


def _check_invariants(out, given_names):
    assert isinstance(out, list) and len(out) == len(given_names) and 1 <= len(out) <= MAX_CLASSES
    keys = set()
    for name in out:
        assert isinstance(name, str) and name == name.strip() and 0 < len(name) <= MAX_CLASS_NAME_LENGTH
        assert unicodedata.normalize("NFC", name) == name and "  " not in name
        assert not any(unicodedata.category(ch) in ("Cc", "Cs", "Co") for ch in name)
        keys.add(unicodedata.normalize("NFC", name.casefold()))
    assert len(keys) == len(out)


_ANY_TEXT = st.text(st.characters(), max_size=40)
_NAMES = st.one_of(
    st.lists(_ANY_TEXT, max_size=8),
    st.lists(st.one_of(_ANY_TEXT, st.integers(), st.none(), st.binary(max_size=5)), max_size=5),
    st.lists(st.text(st.characters(codec="utf-8"), min_size=190, max_size=260), max_size=3),
    _ANY_TEXT,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_NAMES)
def test_fuzzed_class_names_pass_cleanly_or_raise_class_names_error(names):
    try:
        out = check_class_names(names)
    except ClassNamesError as e:
        assert str(e) and len(str(e)) < 2000
        return
    _check_invariants(out, names)


def _tasks_doc(rng) -> str:
    """A tasks file, valid or broken in one of many ways (seeded)."""
    import json

    good = [{"name": "pets", "classes": [{"name": "cat", "folders": ["n02121620"]},
                                         {"name": "dog", "folders": ["n02084071"]}]}]
    text = json.dumps(good)
    kind = rng.integers(6)
    if kind == 0:  # truncated JSON
        return text[: rng.integers(1, len(text))]
    if kind == 1:  # a byte flipped
        i = int(rng.integers(len(text)))
        return text[:i] + chr(int(rng.integers(32, 0x2FF))) + text[i + 1:]
    if kind == 2:  # wrong types
        return json.dumps([{"name": [None, 3, "", "t"][int(rng.integers(4))],
                            "classes": [5, "cat", None, []][int(rng.integers(4))]}])
    if kind == 3:  # duplicate or empty class names
        return json.dumps([{"name": "t", "classes": [{"name": "Cat", "folders": ["a"]}, {"name": " cat", "folders":
                                                                                        ["b"]}]}])
    if kind == 4:  # missing folders
        return json.dumps([{"name": "t", "classes": [{"name": "a"}, {"name": "b", "folders": []}]}])
    return text


def test_fuzzed_tasks_files_load_or_raise_one_clear_error(tmp_path):
    import numpy as np

    from mll_jax.errors import MLLError
    from mll_lab.fashion_mnist import load_tasks_file

    rng = np.random.default_rng(0)
    raised = 0
    for i in range(200):
        p = tmp_path / f"tasks{i}.json"
        p.write_text(_tasks_doc(rng), encoding="utf-8")
        try:
            tasks = load_tasks_file(p)
        except MLLError as e:
            raised += 1
            msg = str(e)
            assert str(p) in msg and "\n" not in msg and len(msg) < 500, msg
            continue
        assert all(len(t["classes"]) >= 2 for t in tasks)
    assert 100 < raised < 200  # both outcomes were exercised


@pytest.mark.parametrize("classes", ["", "cat,,dog", "cat, Cat ", "a\x07b,dog", "x" * 300 + ",dog",
                                     ",".join(f"c{i}" for i in range(5001)), "caf\u00e9,cafe\u0301", "\u200b,dog"])
def test_the_cli_refuses_bad_class_names_with_one_line(tmp_path, classes):
    import subprocess
    import sys
    from pathlib import Path

    from PIL import Image

    from mll_jax.sdag import SDAG
    from mll_jax.system import MLL

    repo = Path(__file__).resolve().parents[1]
    MLL.open(tmp_path / "sys", sdag=SDAG.from_wnids(["n02084071"]))
    Image.new("RGB", (8, 8)).save(tmp_path / "x.png")
    env = {**__import__("os").environ, "PYTHONPATH": str(repo), "MLL_JAX_HOME": str(tmp_path / "home")}
    p = subprocess.run([sys.executable, "-m", "mll_jax.cli", "classify", "--root=sys", f"--classes={classes}",
                        "x.png"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr and len(lines[0]) < 1000, p.stderr[-2000:]
