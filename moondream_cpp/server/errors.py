"""API errors in the OpenAI error shape: {"error": {"message", "type", "param", "code"}}. A message never carries a
file path: whatever a lower layer put in it, absolute paths are replaced before it leaves the server (the server's
own layout is nobody's business; the log keeps the details)."""
from __future__ import annotations

import re

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error", 404: "not_found_error",
          405: "invalid_request_error", 413: "invalid_request_error", 415: "invalid_request_error",
          421: "invalid_request_error", 503: "server_overloaded"}  # else api_error

# an absolute POSIX path ("/home/u/x.gguf"), not a MIME type ("image/png") nor a URL's path
_PATH = re.compile(r"(?<![\w:/.~-])/(?:[\w.@+-]+/)*[\w.@+-]+")


def scrub(message: str) -> str:
    return _PATH.sub("<path>", message)


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": scrub(self.message), "type": _TYPES.get(self.status, "api_error"),
                          "param": self.param, "code": self.code}}
