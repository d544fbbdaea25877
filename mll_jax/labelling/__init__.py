"""Model labels (paper Eq. 1-2) and their store: a package of one-concept modules.

Eq. 1 (raw label).  For expert m with H_m heads and an SDAG node c with representative images D_c::

    r_c^m = 1/|D_c| * sum_{x in D_c} f_m(x)          in R^{H_m}   (mean logit vector)

computed with the expert's own batched, jitted forward (``expert.logits(images)``; node by node:
:func:`node_mean_logits`, packed into full device batches: :mod:`mll_jax.labelling.packing`).
With ``statistic="mean_probability"`` (``MLLConfig.label_statistic``) the raw label is the mean of
``softmax(f_m(x))`` instead, smoothed the same way and stored as its log (:mod:`mll_jax.labelling.statistic`).

Eq. 2 (smoothing over the hierarchy), in REVERSE topological order (hyponyms first), with discount delta::

    s_c = delta * r_c + (1 - delta) * mean_{k in ch(c), k labelled} s_k

where ch(c) are the first-order hyponyms of c in the SDAG and the s_k are already smoothed.  Rules for the
cases the formula does not cover:

* node with own data and no labelled child (e.g. a leaf): ``s_c = r_c`` (own data only);
* node WITHOUT own data but with labelled children: ``s_c = mean_k s_k`` (children only);
* node with neither own data nor a labelled descendant: no label; it is not stored, and
  :meth:`LabelStore.read` raises ``KeyError`` for it (:meth:`LabelStore.nodes` lists the labelled ones).

Default ``delta = 0.5``: a node's own images and its sub-hierarchy weigh equally, so a parent label stays close to
what the expert says on its own images while still summarising the hyponyms (the paper uses a discount in (0, 1);
0.5 is the neutral choice; pass another ``delta`` to :func:`label_models`).

:func:`smooth_labels` is the pure, jit-able implementation: given the raw labels of all nodes, an own-data mask and
the edge list (parent index, child index), it applies the synchronous update ``s <- F(s)`` ``num_iters`` times, where
``F`` evaluates the rules above for every node at once from the current child values (two ``segment_sum``).  A node of
height h (longest path down to a leaf) is exact after h updates, so ``num_iters = max height`` (from
:func:`dag_index`) gives exactly the sequential reverse-topological result, at O((N + E) H) per update.

Storage (:class:`LabelStore`): ``<path>/models/<model-dir>/`` per model (``<model-dir>`` = sanitised model id + a
hash of it) holds a small ``meta.json`` (format, model id, heads, delta, storage dtype, names and checksums of the
current files), ``labels-<id>.rows`` and ``labels-<id>.index.json`` (labelled node ids in row order, head names,
images per node).  Format 2 (``mll_jax.labels/2``, written by default): the rows file holds one fixed-size record
per labelled node: the H label values in the store's ``dtype`` (``LabelStore(path, dtype="float32" | "float16" |
"bfloat16")``, little-endian) followed by a CRC-32 of those bytes seeded with the row number; :meth:`LabelStore.read`
reads only the requested records (one ``pread`` per run of consecutive rows), checks each CRC and returns float32.
Reduced precision rounds to nearest: ``|read - committed| <= u |x| + eta`` (:func:`quantisation_bound`; float16
u = 2^-11, bfloat16 u = 2^-8).  Models labelled on the same SDAG share their node list, which is parsed once per
process (``nodes_sha256`` in meta.json).  Format 1 (``mll_jax.labels/1``: an orbax checkpoint ``labels-<id>/`` of
the float32 matrix, one row per tensorstore chunk) is still read, and written with ``format=1``.
:meth:`LabelStore.pack` builds read-optimised copies: per family (same node list, head count and dtype) one
node-major array in ``<path>/packs/`` whose node blocks hold that node's rows of every model, each block with a
CRC-32; :meth:`LabelStore.read_many` (what selection uses) then reads a query's C nodes as C block reads per family
instead of opening every model's file; models committed after the pack are read from their own files.  A commit
writes the new rows (or checkpoint) and index first, then atomically replaces ``meta.json``, then removes the old
ones: readers always see a complete label set.  ``raw/`` holds the Eq. 1 raw means, appended in small
atomically written ``.npz`` chunks while labelling runs, keyed by node id and the node's image content hash: a
killed run restarts where it stopped, and after nodes are added to (or re-imaged in) the SDAG only those nodes are
run through the expert again.

Model fingerprints (stale labels): an expert may carry ``expert.fingerprint`` (a string; experts loaded from
:class:`mll_jax.hub.ModelHub` do: a hash of weights, preprocessing and options).  Raw chunks and committed labels
record it; :func:`label_models` ignores raw means made under another fingerprint (the model was updated under the
same id) and recomputes every node, saying so (a warning and ``"fingerprint_changed": True`` in its summary).
:meth:`LabelStore.fingerprint` tells which model version the committed labels come from.

Integrity: ``meta.json`` records SHA-256 checksums of the row index and of the label matrix (format 2: of the
rows file, plus the node-list hash; every record carries its own CRC-32); they are verified when read (format 1:
the index on every read; format 2: the node list when first parsed, each row read by :meth:`LabelStore.read`; the
matrix by :meth:`LabelStore.read_all`; everything by :meth:`LabelStore.check`).  A
damaged or edited file raises :class:`LabelStoreCorruptError` naming the file and the model, with the recovery
(relabel that model: ``store.delete(model_id)`` then :func:`label_models`).  A damaged model is isolated:
:meth:`LabelStore.model_ids` lists the models whose labels can be opened and :meth:`LabelStore.damaged_models`
the others, so listing and selection over the intact models keep working.

Modules:

- :mod:`~mll_jax.labelling.smoothing` -- Eq. 2 (:func:`smooth_labels`, :func:`dag_index`), pure JAX;
- :mod:`~mll_jax.labelling.statistic` -- the label statistic: Eq. 1's mean logits (default) or mean probabilities;
- :mod:`~mll_jax.labelling.means` -- Eq. 1 node by node (:func:`node_mean_logits`);
- :mod:`~mll_jax.labelling.packing` -- Eq. 1 packed into full device batches (:func:`iter_node_means`);
- :mod:`~mll_jax.labelling.layout` -- formats, storage dtypes, file names, checksums, the atomic writer;
- :mod:`~mll_jax.labelling.store` -- :class:`LabelStore` (reading, committing; format 2 and format 1);
- :mod:`~mll_jax.labelling.format1` -- the orbax checkpoints of format 1;
- :mod:`~mll_jax.labelling.packs` -- read-optimised packs (:meth:`LabelStore.pack`, :meth:`LabelStore.read_many`);
- :mod:`~mll_jax.labelling.raw` -- the raw (Eq. 1) cache;
- :mod:`~mll_jax.labelling.run` -- :func:`label_models`, the unit scheduler over one or many processes.
"""

from mll_jax.config import DEFAULT_DELTA
from mll_jax.errors import LabellingError, LabelPrecisionError, LabelStoreCorruptError, NonFiniteLogitsError
from mll_jax.utils import atomic_write_bytes  # noqa: F401  (importable here as before; the store writes via layout)

from .layout import LABEL_DTYPES, quantisation_bound
from .means import node_mean_logits
from .packing import PackingError, iter_node_means, packed_node_means
from .run import label_models
from .smoothing import DagIndex, dag_index, smooth_labels
from .statistic import DEFAULT_LABEL_STATISTIC, LABEL_STATISTICS
from .store import LabelStore

__all__ = [
    "DEFAULT_DELTA",
    "DEFAULT_LABEL_STATISTIC",
    "LABEL_STATISTICS",
    "DagIndex",
    "dag_index",
    "smooth_labels",
    "node_mean_logits",
    "LabelStore",
    "LabellingError",
    "LabelStoreCorruptError",
    "LabelPrecisionError",
    "LABEL_DTYPES",
    "quantisation_bound",
    "NonFiniteLogitsError",
    "label_models",
    "iter_node_means",
    "packed_node_means",
    "PackingError",
]
