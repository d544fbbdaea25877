"""Task class names: the one validator every entry point (API, CLI, VLM selection, matching) uses."""

from __future__ import annotations

from mll_jax.errors import ClassNamesError

__all__ = ["check_class_names"]


def check_class_names(class_names) -> list[str]:
    """Validate task class names: a non-empty list of non-empty strings, distinct after stripping spaces and case.

    Names are returned stripped."""
    if isinstance(class_names, str):
        raise ClassNamesError(
            f"class_names must be a list of names, got the string {class_names!r} (it would be one class per "
            f"character); pass e.g. {class_names.split(',') if ',' in class_names else [class_names]!r}")
    try:
        names = list(class_names)
    except TypeError:
        raise ClassNamesError(f"class_names must be a list of strings, got {type(class_names).__name__}") from None
    if not names:
        raise ClassNamesError("no class names given: a task needs at least one class")
    out = []
    for i, c in enumerate(names):
        if not isinstance(c, str):
            raise ClassNamesError(f"class name {i} is {c!r} ({type(c).__name__}); class names must be strings")
        if not c.strip():
            raise ClassNamesError(f"class name {i} is empty")
        out.append(" ".join(c.split()))
    seen: dict[str, int] = {}
    for i, c in enumerate(out):
        key = c.casefold()
        if key in seen:
            raise ClassNamesError(f"duplicate class names: {names[seen[key]]!r} (#{seen[key]}) and {names[i]!r} (#{i}) "
                                  "are the same class")
        seen[key] = i
    return out
