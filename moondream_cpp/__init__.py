"""moondream-cpp: moondream on llama.cpp, faithful to the original model."""
__version__ = "0.1.0"

from .errors import MoondreamError  # noqa: E402
from .options import GenerationOptions  # noqa: E402


def __getattr__(name):  # the runtime loads llama.cpp; keep `import moondream_cpp` light for the converter
    if name in ("Moondream", "EncodedImage", "Answer", "Stream"):
        from . import runtime

        return getattr(runtime, name)
    if name == "Request":  # one of many requests answered together: Moondream.answer_all
        from .parallel import Request

        return Request
    raise AttributeError(name)


__all__ = ["Moondream", "EncodedImage", "Answer", "Stream", "Request", "GenerationOptions", "MoondreamError",
           "__version__"]
