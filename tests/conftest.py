"""Shared pytest fixtures (keep small; add fixtures here only when several test files need them)."""

import pytest


@pytest.fixture(scope="session")
def wn():
    """The nltk WordNet 3.0 reader (installed offline by `python -m mll_jax.wordnet install`)."""
    from mll_jax.wordnet import get_wordnet

    return get_wordnet()
