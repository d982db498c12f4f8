"""User-facing errors: each names the problem and what to do. The CLI prints them without a traceback."""


class MoondreamError(Exception):
    """A problem with the user's input or environment (never a bug in moondream-cpp)."""

    exit_code = 1


class ModelFileError(MoondreamError):
    """A GGUF file is missing, truncated, of the wrong kind or inconsistent with its partner."""

    exit_code = 3


class CheckpointError(MoondreamError):
    """An HF checkpoint directory cannot be converted (missing files, unknown or unsupported layout)."""

    exit_code = 3


class ImageError(MoondreamError):
    """An image cannot be read or is unsafe to decode."""

    exit_code = 4


class PromptTooLongError(MoondreamError):
    """The prompt (image + chat history + question) does not fit the context window."""

    exit_code = 5


class DownloadError(MoondreamError):
    """A pull failed: no network, offline mode, a missing file on the hub, or a checksum mismatch."""

    exit_code = 6


class DiskFullError(MoondreamError):
    """No space left (or a file-size limit) while writing a model."""

    exit_code = 7


class UnknownModelError(MoondreamError):
    """A --model name that is neither a path nor a known model, or a known model not downloaded yet."""

    exit_code = 8


def os_error_text(e: OSError) -> str:
    """An OSError in words ('Not a directory: /x/y'), without Python's '[Errno 20]' and quoting."""
    return f"{e.strerror or e}{': ' + str(e.filename) if e.filename else ''}"


class DecodeError(MoondreamError):
    """llama.cpp failed to evaluate a batch; the whole KV cache (every sequence) was emptied."""
