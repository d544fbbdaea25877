"""Format 1 of the label store (``mll_jax.labels/1``): one orbax checkpoint ``labels-<id>/`` per model holding the
float32 label matrix, one row per tensorstore chunk (still read; written by ``LabelStore(path, format=1)``).

Row reads open the checkpoint's array with tensorstore (:func:`open_rows`, kept open by the store) and read only the
requested rows; :func:`read_matrix` restores the whole matrix through orbax; :func:`write` saves one.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mll_jax.utils import orbax_checkpointer

__all__ = ["open_rows", "read_matrix", "write"]


def open_rows(checkpoint: Path, use_zarr3: bool = False):
    """The tensorstore array of the label matrix in the orbax checkpoint directory ``checkpoint``."""
    import orbax.checkpoint as ocp
    import tensorstore as ts

    ctx = ocp.type_handlers.get_ts_context(use_ocdbt=True)
    info = ocp.type_handlers.ParamInfo(name="labels", parent_dir=checkpoint, is_ocdbt_checkpoint=True,
                                       use_zarr3=bool(use_zarr3), ts_context=ctx)
    spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=True)
    return ts.open(spec, context=ctx, open=True).result()


def read_matrix(checkpoint: Path) -> np.ndarray:
    """The whole float32 label matrix of an orbax checkpoint."""
    import orbax.checkpoint as ocp

    with orbax_checkpointer(ocp.StandardCheckpointHandler()) as ck:
        return np.asarray(ck.restore(checkpoint)["labels"], dtype=np.float32)


def write(checkpoint: Path, labels: np.ndarray) -> None:
    """Save the float32 ``labels`` (N, H) as an orbax checkpoint, one row per chunk."""
    import orbax.checkpoint as ocp

    with orbax_checkpointer(ocp.StandardCheckpointHandler()) as ck:
        ck.save(checkpoint, args=ocp.args.StandardSave(
            {"labels": labels}, save_args={"labels": ocp.SaveArgs(shard_axes=(0,))}))
