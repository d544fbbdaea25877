"""Task class names: the one validator every entry point (API, CLI, VLM selection, matching) uses."""

from __future__ import annotations

import itertools
import unicodedata

from mll_jax.errors import ClassNamesError

__all__ = ["check_class_names", "MAX_CLASS_NAME_LENGTH", "MAX_CLASSES"]

#: Longest class name accepted, in characters after normalising (NFC, whitespace runs collapsed).
MAX_CLASS_NAME_LENGTH = 200
#: Most class names one task may have.
MAX_CLASSES = 5000

# Format characters kept in names: zero-width non-joiner and joiner (needed by some scripts and emoji sequences).
_ALLOWED_FORMAT = frozenset("\u200c\u200d")


def _shown(name: str, limit: int = 40) -> str:
    return repr(name if len(name) <= limit else name[:limit] + "...")


def check_class_names(class_names) -> list[str]:
    """Validate task class names and return them normalised.

    Accepted: a non-empty list (or other finite iterable) of strings.  Each name is normalised to Unicode NFC (so
    visually equal names are equal) and its whitespace runs are collapsed into single spaces (leading and trailing
    whitespace removed).  Refused with :class:`ClassNamesError` naming the class (its position and a preview):

    * a bare string (it would be one class per character), a non-iterable, a non-string item;
    * no names, or more than :data:`MAX_CLASSES` (5,000);
    * a name that is empty after normalising;
    * a name longer than :data:`MAX_CLASS_NAME_LENGTH` (200 characters, after normalising);
    * a name with control characters (other than whitespace, which is collapsed), surrogates, private-use
      characters, or invisible format characters such as zero-width spaces and bidirectional overrides (zero-width
      (non-)joiners are kept);
    * two names equal after normalising and case folding.
    """
    if isinstance(class_names, str):
        shown = class_names if len(class_names) <= 80 else class_names[:80] + "..."
        raise ClassNamesError(
            f"class_names must be a list of names, got the string {shown!r} (it would be one class per "
            f"character); pass e.g. {shown.split(',') if ',' in shown else [shown]!r}")
    if isinstance(class_names, (bytes, bytearray)):
        raise ClassNamesError("class_names must be a list of strings, got bytes")
    try:
        names = list(itertools.islice(iter(class_names), MAX_CLASSES + 1))  # bounded: no hang on endless input
    except TypeError:
        raise ClassNamesError(f"class_names must be a list of strings, got {type(class_names).__name__}") from None
    if not names:
        raise ClassNamesError("no class names given: a task needs at least one class")
    if len(names) > MAX_CLASSES:
        more = f"{len(class_names):,}" if hasattr(class_names, "__len__") else f"more than {MAX_CLASSES:,}"
        raise ClassNamesError(f"{more} class names given: a task may have at most {MAX_CLASSES:,} "
                              "classes (mll_jax.names.MAX_CLASSES)")
    out = []
    for i, c in enumerate(names):
        if not isinstance(c, str):
            raise ClassNamesError(f"class name {i} is {_shown(repr(c))} ({type(c).__name__}); class names must be "
                                  "strings")
        try:
            c.encode("utf-8")
        except UnicodeEncodeError:
            raise ClassNamesError(f"class name {i} ({_shown(c)}) holds a lone surrogate, not text") from None
        norm = " ".join(unicodedata.normalize("NFC", c).split())
        if not norm:
            raise ClassNamesError(f"class name {i} is empty")
        for ch in norm:
            cat = unicodedata.category(ch)
            if cat in ("Cc", "Cs", "Co") or (cat == "Cf" and ch not in _ALLOWED_FORMAT):
                kind = {"Cc": "a control character", "Cs": "a surrogate", "Co": "a private-use character"}.get(
                    cat, "an invisible format character")
                raise ClassNamesError(f"class name {i} ({_shown(norm)}) contains {kind} (U+{ord(ch):04X}); use "
                                      "plain text")
        if len(norm) > MAX_CLASS_NAME_LENGTH:
            raise ClassNamesError(f"class name {i} ({_shown(norm)}) has {len(norm):,} characters; at most "
                                  f"{MAX_CLASS_NAME_LENGTH} are allowed (mll_jax.names.MAX_CLASS_NAME_LENGTH)")
        out.append(norm)
    seen: dict[str, int] = {}
    for i, c in enumerate(out):
        key = unicodedata.normalize("NFC", c.casefold())
        if key in seen:
            raise ClassNamesError(f"duplicate class names: {names[seen[key]]!r} (#{seen[key]}) and {names[i]!r} (#{i}) "
                                  "are the same class")
        seen[key] = i
    return out
