"""The selection layer's types: scorer output (:class:`ModelScores`), the result (:class:`Selection`, with its
``.npz`` persistence) and the scorer interface (:class:`ScoringTask`, :class:`Scorer`).

:class:`Selection` is the one selection type of every model family: experts (a scorer's top-k per class), VLMs
(the MLL-VLM F1 selection, built from :class:`mll_jax.vlm.select.VLMSelection` by :meth:`Selection.from_vlm`, or
the CHCO-style baseline) and both (the expert selection plus the VLM selection serving the classes no expert
covers, :meth:`Selection.with_vlm`)."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from mll_jax.utils import atomic_write
from mll_jax.vlm.select import VLMSelection

__all__ = ["FAMILIES", "ModelScores", "Selection", "ScoringTask", "Scorer", "heads_carrying"]

#: Values of :attr:`Selection.family`: who serves the task's classes.
FAMILIES = ("experts", "vlms", "both")


def heads_carrying(contribution, share: float = 0.9) -> np.ndarray:
    """The fewest heads whose ``contribution`` (one predictor column's ``X[h, c] * P[h, c]``) sums to at least
    ``share`` of its total, largest first (empty when the total is not positive)."""
    contrib = np.asarray(contribution, np.float64)
    total = float(contrib.sum())
    if total <= 0:
        return np.zeros(0, np.int64)
    order = np.argsort(-contrib, kind="stable")
    n = int(np.searchsorted(np.cumsum(contrib[order]), share * total) + 1)
    return order[:min(n, int((contrib > 0).sum()))]


@dataclass(frozen=True)
class ModelScores:
    """Output of any scorer: a lower-is-better ``(M, C)`` matrix, optionally with one-vs-rest columns.

    ``loss[m, c]`` ranks model ``m`` for class ``c`` (CHCO / HEU: the per-class loss; Random: a random
    key; LogME / LEEP: the negated per-class score).  ``+inf`` marks "not eligible".  ``columns[m]`` is
    ``(H_m, C)``: the model's one-vs-rest predictor columns, or ``None`` when the scorer has none.
    """

    method: str
    model_ids: tuple[str, ...]
    loss: np.ndarray
    columns: tuple[np.ndarray, ...] | None = None
    info: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "model_ids", tuple(str(m) for m in self.model_ids))
        loss = np.asarray(self.loss, dtype=np.float64)
        if loss.ndim != 2 or loss.shape[0] != len(self.model_ids):
            raise ValueError(f"{self.method}: loss must be (M={len(self.model_ids)}, C), got {loss.shape}")
        object.__setattr__(self, "loss", loss)
        if self.columns is not None:
            cols = tuple(np.asarray(x, dtype=np.float32) for x in self.columns)
            if len(cols) != len(self.model_ids):
                raise ValueError(f"{self.method}: {len(cols)} column matrices for {len(self.model_ids)} models")
            for model_id, x in zip(self.model_ids, cols):
                if x.ndim != 2 or x.shape[1] != loss.shape[1]:
                    raise ValueError(
                        f"{self.method}: columns of model {model_id!r} have shape {x.shape}, expected (H, {loss.shape[1]})"
                    )
            object.__setattr__(self, "columns", cols)

    @property
    def num_classes(self) -> int:
        return int(self.loss.shape[1])


@dataclass(frozen=True)
class Selection:
    """The models serving each target class (experts, VLMs or both).

    Attributes:
      method: scorer name ("chco", "random", "heu", "logme", "leep", ...; VLMs: "mll" or "chco").
      model_ids: the candidate models (rows of ``loss``).
      loss: ``(M, C)`` lower-is-better scores used for the ranking (MLL-VLM selection: ``-score``).
      experts: per class, indices into ``model_ids``, best first (empty tuple: uncovered).  For ``family="both"``
        these are the experts; the VLMs serving the uncovered classes are in ``vlm``.
      columns: ``model_id -> (H_m, C)`` one-vs-rest columns for every model used by some class
        (may be empty until :func:`fill_columns` is applied).
      k, beta: the reuse budget and the loss threshold (``None``: no threshold).
      class_names, wnids: the target classes (``wnids[c] is None``: matched no SDAG node).
      similarities: per class, the text similarity of its matched node (of the best node when unmatched).
      match_threshold: the similarity floor the matching used (for the explanation of uncovered classes).
      info: scorer diagnostics (e.g. CHCO iterations / convergence), JSON-able values only after save/load.
      family: ``"experts"``, ``"vlms"`` or ``"both"`` (:data:`FAMILIES`).
      head_mass: ``model_id -> (H_m, C)``: each used model's head probabilities ``softmax(S)[h, c]`` on the matched
        node of class ``c`` (zero columns for unmatched classes); :meth:`explain` ranks heads by what they
        contribute there, ``X[h, c] * head_mass[h, c]`` (empty for selections saved without it).
      vlm: the MLL-VLM selection record (:class:`mll_jax.vlm.select.VLMSelection`: matched nodes with weights and
        similarities, F1, scores, alpha, chosen VLMs) of ``family="vlms"`` with ``method="mll"`` and of
        ``family="both"``; ``None`` otherwise.
      matching: per class, how its name was matched (``None``: not recorded): ``{"method"`` ("wnid", "lemma",
        "text"), ``"synset"`` (the class's own synset, or None), ``"candidates"`` (``[[wnid, score], ...]``, best
        first), ``"reason"`` (why the winner won, or why the class is uncovered), ``"refused"`` (the node the
        hierarchy guard refused, or None)``}``.
    """

    method: str
    model_ids: tuple[str, ...]
    loss: np.ndarray
    experts: tuple[tuple[int, ...], ...]
    columns: Mapping[str, np.ndarray]
    k: int
    beta: float | None
    class_names: tuple[str, ...] | None = None
    wnids: tuple[str | None, ...] | None = None
    similarities: tuple[float, ...] | None = None
    match_threshold: float | None = None
    info: Mapping[str, Any] = field(default_factory=dict)
    family: str = "experts"
    vlm: VLMSelection | None = None
    head_mass: Mapping[str, np.ndarray] = field(default_factory=dict)
    matching: tuple[Mapping[str, Any], ...] | None = None

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Selection.family must be one of {FAMILIES}, got {self.family!r}")

    @classmethod
    def from_vlm(cls, vsel: VLMSelection) -> "Selection":
        """The MLL-VLM selection as a :class:`Selection` (``family="vlms"``, ``method="mll"``): ``experts`` are the
        chosen VLMs, ``loss = -score``, ``wnids`` / ``similarities`` the most similar matched node of each class,
        ``vlm`` the record itself."""
        idx, sims = np.asarray(vsel.match_idx), np.asarray(vsel.match_sims)
        return cls(method="mll", model_ids=tuple(vsel.model_ids), loss=-np.asarray(vsel.scores, np.float64),
                   experts=tuple(tuple(int(m) for m in row) for row in np.asarray(vsel.chosen)), columns={},
                   k=vsel.k, beta=None, class_names=tuple(vsel.class_names),
                   wnids=tuple(vsel.nodes[int(r[0])] if len(r) else None for r in idx),
                   similarities=tuple(float(r[0]) if len(r) else float("nan") for r in sims),
                   info={"alpha": float(vsel.alpha)}, family="vlms", vlm=vsel)

    def with_vlm(self, vsel: VLMSelection) -> "Selection":
        """This expert selection with the VLM selection ``vsel`` (made for every class) serving the classes it does
        not cover (``family="both"``)."""
        if list(vsel.class_names) != list(self.class_names or []):
            raise ValueError(f"the VLM selection is for {list(vsel.class_names)}, not {list(self.class_names or [])}")
        return dataclasses.replace(self, family="both", vlm=vsel)

    @property
    def num_classes(self) -> int:
        return len(self.experts)

    def uncovered_reason(self, c: int) -> str | None:
        """Why class ``c`` has no expert (``None`` when it is covered)."""
        if self.experts[c]:
            return None
        sim = None if self.similarities is None else self.similarities[c]
        note = self.matching[c] if self.matching is not None else None
        if self.wnids is not None and self.wnids[c] is None and note and note.get("reason"):
            return note["reason"]
        if self.wnids is not None and self.wnids[c] is None:
            thr = "" if self.match_threshold is None else f" < threshold {self.match_threshold:.2f}"
            best = "" if sim is None or not np.isfinite(sim) else f" (best similarity {sim:.2f}{thr})"
            return f"no SDAG node matched the class name{best}"
        if self.wnids is not None and sum(w is not None for w in self.wnids) < 2 and self.method in ("chco", "heu"):
            return "fewer than 2 classes matched an SDAG node: a one-vs-rest score needs at least 2"
        col = self.loss[:, c] if len(self.model_ids) else np.zeros(0)
        finite = np.isfinite(col)
        if not finite.any():
            return "no model has a usable score for the matched node"
        m = int(np.argmin(np.where(finite, col, np.inf)))
        if self.beta is not None:
            return (f"no model under the loss threshold beta={self.beta:g} (best: {self.model_ids[m]!r} with "
                    f"loss {col[m]:.3f})")
        return "no eligible model"  # pragma: no cover - every finite loss is eligible without a threshold

    def explain(self) -> list[dict]:
        """One row per class, of the same shape for every family:

        * ``class``; ``family``: who serves it (``"experts"``, ``"vlms"``, or ``None`` when nobody is selected);
        * ``node`` / ``similarity``: the matched SDAG node (MLL-VLM selection: the most similar of the weighted
          nodes) and its text similarity;
        * ``nodes``: the weighted nodes ``(node, weight, similarity)`` of the MLL-VLM matching when VLMs of that
          selection serve the class, else ``None``;
        * ``experts``: the models serving the class, best first, each ``{"model", "family", "loss", "heads"}``
          (``heads``: up to 5 heads of its predictor column, see :meth:`head_contributions`; ``heads_90``: how many
          heads carry 90% of the contribution; MLL-VLM entries add ``"f1"`` and ``"score"``);
        * ``uncovered``: why no expert covers the class (``None`` when covered; always ``None`` for the MLL-VLM
          selection, which serves every class);
        * ``match``: how the class name was matched (:attr:`matching`: method, own synset, candidate nodes with
          scores, the reason the winner won or why none did), or ``None``.
        """
        vex = self.vlm.explain() if self.vlm is not None else None
        model_family = "vlms" if self.family == "vlms" else "experts"
        out = []
        for c in range(self.num_classes):
            name = self.class_names[c] if self.class_names else str(c)
            row = {
                "class": name,
                "family": model_family if self.experts[c] else None,
                "node": None if self.wnids is None else self.wnids[c],
                "similarity": None if self.similarities is None else float(self.similarities[c]),
                "nodes": None,
                "experts": [],
                "uncovered": self.uncovered_reason(c),
                "match": None if self.matching is None else dict(self.matching[c]),
            }
            if vex is not None and (self.family == "vlms" or not self.experts[c]):
                row["family"], row["nodes"] = "vlms", list(vex[name]["nodes"])
                if self.family == "both":  # the VLMs serve the class the experts do not cover
                    row["experts"] = [{"model": m, "family": "vlms", "loss": -s, "heads": [], "f1": f, "score": s}
                                      for m, f, s in vex[name]["models"]]
                    out.append(row)
                    continue
            for m in self.experts[c]:
                mid = self.model_ids[m]
                e = {"model": mid, "family": model_family, "loss": float(self.loss[m, c]), "heads": []}
                if vex is not None:
                    _, e["f1"], e["score"] = vex[name]["models"][self.experts[c].index(m)]
                x = self.columns.get(mid)
                if x is not None:
                    e["heads"], e["heads_90"] = self.head_contributions(mid, c)
                row["experts"].append(e)
            out.append(row)
        return out

    def head_contributions(self, model_id: str, c: int, top: int = 5) -> tuple[list[dict], int | None]:
        """The heads of ``model_id``'s predictor column for class ``c``, by what they contribute on the class's node
        data: ``contribution = X[h, c] * P[h, c]`` with ``P = softmax(S)`` the head probabilities on the node
        (their sum is the predictor's mean output ``Q[c, c]`` there).  Returns up to ``top`` heads
        ``{"head", "weight", "mass", "contribution", "share"}`` (``share``: of the column's total contribution) and
        how many heads carry 90% of it.  Without ``head_mass`` (selections saved before it existed) the heads are
        ranked by weight, ``mass`` / ``contribution`` / ``share`` are None and the count is None."""
        col = np.asarray(self.columns[model_id], np.float64)[:, c]
        mass = self.head_mass.get(model_id)
        if mass is None:
            order = np.argsort(-col, kind="stable")[:top]
            return [{"head": int(h), "weight": float(col[h]), "mass": None, "contribution": None, "share": None}
                    for h in order if col[h] > 1e-3], None
        p = np.asarray(mass, np.float64)[:, c]
        contrib = col * p
        total = float(contrib.sum())
        order = np.argsort(-contrib, kind="stable")
        rows = [{"head": int(h), "weight": float(col[h]), "mass": float(p[h]), "contribution": float(contrib[h]),
                 "share": float(contrib[h] / total) if total > 0 else 0.0}
                for h in order[:top] if col[h] > 1e-3 and contrib[h] > 0]
        return rows, len(heads_carrying(contrib))

    @property
    def covered(self) -> np.ndarray:
        """``(C,)`` bool: the class has at least one expert."""
        return np.array([len(e) > 0 for e in self.experts], dtype=bool)

    @property
    def uncovered(self) -> list[int]:
        return [c for c, e in enumerate(self.experts) if not e]

    @property
    def used_model_ids(self) -> tuple[str, ...]:
        """Models selected for at least one class, in candidate order."""
        used = sorted({m for e in self.experts for m in e})
        return tuple(self.model_ids[m] for m in used)

    def expert_ids(self, c: int) -> list[str]:
        return [self.model_ids[m] for m in self.experts[c]]

    def mask(self, model_ids: Sequence[str] | None = None) -> np.ndarray:
        """``(len(model_ids), C)`` bool: model selected for class (default rows: :attr:`used_model_ids`)."""
        model_ids = self.used_model_ids if model_ids is None else tuple(model_ids)
        row = {m: i for i, m in enumerate(model_ids)}
        out = np.zeros((len(model_ids), self.num_classes), dtype=bool)
        for c, experts in enumerate(self.experts):
            for m in experts:
                mid = self.model_ids[m]
                if mid in row:
                    out[row[mid], c] = True
        return out

    def missing_columns(self) -> list[str]:
        return [m for m in self.used_model_ids if m not in self.columns]

    def summary(self) -> str:
        cov = self.covered
        lines = [
            f"{self.method}: {int(cov.sum())}/{self.num_classes} classes covered, "
            f"{len(self.used_model_ids)} of {len(self.model_ids)} models used (k={self.k}, beta={self.beta})"
        ]
        for c, experts in enumerate(self.experts):
            name = self.class_names[c] if self.class_names else str(c)
            picks = (", ".join(f"{self.model_ids[m]} ({self.loss[m, c]:.4g})" for m in experts)
                     or f"-- (patch: {self.uncovered_reason(c)})")
            lines.append(f"  {name}: {picks}")
        return "\n".join(lines)

    # --- persistence (atomic: temp file + rename) ---------------------------------------------------

    def save(self, path: str | os.PathLike, *, extra: Mapping[str, Any] | None = None) -> None:
        """Write to an ``.npz`` file atomically (``extra``: JSON-able metadata kept alongside)."""
        path = os.fspath(path)
        meta = {
            "method": self.method,
            "model_ids": list(self.model_ids),
            "experts": [list(e) for e in self.experts],
            "column_ids": list(self.columns),
            "mass_ids": list(self.head_mass),
            "k": self.k,
            "beta": self.beta,
            "class_names": None if self.class_names is None else list(self.class_names),
            "wnids": None if self.wnids is None else list(self.wnids),
            "similarities": None if self.similarities is None else [float(x) for x in self.similarities],
            "match_threshold": self.match_threshold,
            "family": self.family,
            "vlm": None if self.vlm is None else self.vlm.to_dict(),
            "matching": None if self.matching is None else [dict(m) for m in self.matching],
            "extra": dict(extra or {}),
        }
        arrays = {"loss": self.loss, "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)}
        for i, model_id in enumerate(self.columns):
            arrays[f"col{i}"] = np.asarray(self.columns[model_id])
        for i, model_id in enumerate(self.head_mass):
            arrays[f"mass{i}"] = np.asarray(self.head_mass[model_id], np.float32)
        atomic_write(path, lambda fh: np.savez(fh, **arrays))

    @staticmethod
    def read_extra(path: str | os.PathLike) -> dict:
        """The ``extra`` metadata written by :meth:`save`."""
        return Selection._read(path)[0].get("extra") or {}

    @staticmethod
    def _read(path):
        path = os.fspath(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(bytes(data["meta"]).decode())
                columns = {m: np.array(data[f"col{i}"]) for i, m in enumerate(meta["column_ids"])}
                meta["head_mass"] = {m: np.array(data[f"mass{i}"]) for i, m in enumerate(meta.get("mass_ids", []))}
                loss = np.array(data["loss"])
        except FileNotFoundError:
            raise FileNotFoundError(f"no saved selection at {path}") from None
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
            raise ValueError(f"{path} is not a readable saved selection ({type(e).__name__}: {e})") from e
        return meta, columns, loss

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Selection":
        meta, columns, loss = cls._read(path)
        return cls(
            method=meta["method"],
            model_ids=tuple(meta["model_ids"]),
            loss=loss,
            experts=tuple(tuple(e) for e in meta["experts"]),
            columns=columns,
            k=meta["k"],
            beta=meta["beta"],
            class_names=None if meta["class_names"] is None else tuple(meta["class_names"]),
            wnids=None if meta["wnids"] is None else tuple(meta["wnids"]),
            similarities=None if meta.get("similarities") is None else tuple(meta["similarities"]),
            match_threshold=meta.get("match_threshold"),
            family=meta.get("family", "experts"),
            vlm=None if meta.get("vlm") is None else VLMSelection.from_dict(meta["vlm"]),
            head_mass=meta.get("head_mass", {}),
            matching=None if meta.get("matching") is None else tuple(meta["matching"]),
        )


@dataclass(frozen=True)
class ScoringTask:
    """What a scorer sees: the label reader, the candidate models and the matched classes' nodes.

    ``wnids`` holds only the matched classes (no ``None``); a scorer returns :class:`ModelScores` with one column
    per entry of ``wnids``.  ``node_data(model_ids, wnids) -> (outputs, labels)`` gives, for scorers that need
    target data (LogME, LEEP), every model's logits on the nodes' representative images and their class ids
    (``None`` when no image source is available).  ``options`` carries scorer options (``seed``, ``link``, the
    CHCO ``method`` / ``tol`` / solver keyword arguments).
    """

    labels: Any
    model_ids: tuple[str, ...]
    wnids: tuple[str, ...]
    node_data: Callable[[Sequence[str], Sequence[str]], tuple[list, np.ndarray]] | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    progress: bool = False


@dataclass(frozen=True)
class Scorer:
    """A named scorer: ``fn(task: ScoringTask) -> ModelScores`` (lower is better).

    ``uses_beta``: the loss threshold applies to its scores (CHCO and HEU share CHCO's loss scale);
    ``min_classes``: classes that must be matched for it to score at all (one-vs-rest scores need 2).
    """

    name: str
    fn: Callable[[ScoringTask], ModelScores]
    uses_beta: bool = False
    min_classes: int = 1
