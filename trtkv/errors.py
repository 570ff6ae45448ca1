"""User-facing errors. Every message says what went wrong and what to do about it."""

from __future__ import annotations


class TrtkvError(Exception):
    """Base of every error a user can cause; the CLI prints it on one line and exits non-zero."""


class CheckpointError(TrtkvError):
    """The checkpoint directory is missing, incomplete, corrupt or of an unsupported model."""


class ModelDirError(TrtkvError):
    """An exported model directory (ONNX + manifest) is missing or inconsistent."""


class ConfigError(TrtkvError):
    """An engine/scheduler/export option has an invalid value."""


class InvalidRequestError(TrtkvError):
    """A request is malformed (bad sampling parameters, empty prompt, unknown token ids).

    Attributes:
        param: the request parameter at fault, as the client named it, when known.
    """

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class RequestRejectedError(TrtkvError):
    """A well-formed request that the engine cannot serve now or ever.

    Attributes:
        reason: machine-readable reason, e.g. ``"too_long"``, ``"kv_capacity"``,
            ``"queue_full"``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class BackendUnavailableError(TrtkvError):
    """A backend's libraries or device are not present (e.g. TensorRT without a GPU)."""


class MissingExtraError(TrtkvError):
    """An optional dependency is not installed; the message names the pip extra that brings it."""
