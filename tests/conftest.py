"""Shared pytest fixtures (keep small; add fixtures here only when several test files need them)."""

import pytest


@pytest.fixture(scope="session")
def wn():
    """The nltk WordNet 3.0 reader (installed offline by `python -m mll_jax.wordnet install`)."""
    from mll_jax.wordnet import get_wordnet

    return get_wordnet()


@pytest.fixture(scope="module", autouse=True)
def _no_leaked_environment():
    """A test module must leave the process environment as it found it (use monkeypatch): a leaked
    MLL_JAX_HOME once sent every later module's caches to a tmp dir, and CI re-encoded 82,115 texts."""
    import os

    def ours():  # libraries set a few variables of their own on import (TF_CPP_MIN_LOG_LEVEL, ...)
        return {k: v for k, v in os.environ.items()
                if k.startswith(("MLL_JAX", "JAX_", "XLA_", "NLTK_")) or k in ("HOME", "PATH", "PYTHONPATH")}

    before = ours()
    yield
    after = ours()
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"this test module changed environment variables without restoring them: {changed}"
