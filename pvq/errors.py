"""The user-error hierarchy shared by every layer (layer 0: imports nothing of pvq).

Every error that bad *input* causes (arguments, data, files, models) is a
:class:`PvqError`, a ``ValueError`` whose message says what to change. The
``pvq`` CLI turns any of them into exit code 2 and one line, no traceback.
Each layer raises its own subclass, so callers can catch as narrowly as they
like; the class names say where the input was refused.
"""

from __future__ import annotations

__all__ = [
    "CalibrationError",
    "CheckpointError",
    "CodecError",
    "EvalError",
    "PvqError",
    "QuantizeError",
    "SolverError",
    "TransformError",
]


class PvqError(ValueError):
    """Bad input to pvq; the message says what to change."""


class CodecError(PvqError):
    """Bad codec arguments or input vectors (layer 1, ``pvq.codecs``)."""


class TransformError(PvqError):
    """Bad rotation arguments or input (layer 2, ``pvq.transforms``)."""


class SolverError(PvqError):
    """Bad solver input: shapes, Hessians, layouts (layer 3, ``pvq.solvers``)."""


class QuantizeError(PvqError):
    """Bad quantization input: method, rate, model structure, options (layer 4, ``pvq.models``)."""


class CalibrationError(QuantizeError):
    """Calibration text or token ids that cannot be used."""


class CheckpointError(QuantizeError):
    """A checkpoint that is missing, incomplete, edited or does not match its config."""


class EvalError(PvqError):
    """Bad evaluation input: data, context, stride, tasks (layer 6, ``pvq.eval``)."""
