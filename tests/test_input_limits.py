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
