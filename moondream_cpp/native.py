"""Load llama.cpp (via llama-cpp-python) once, with its logging routed to Python and quiet by default."""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("moondream_cpp.llama")
_state = {"ready": False}


def llama():
    """The llama_cpp module, initialised: backend loaded, native logs sent to the `moondream_cpp.llama` logger."""
    import llama_cpp

    if not _state["ready"]:
        @llama_cpp.llama_log_callback
        def _log(level, text, _user):
            if os.environ.get("MOONDREAM_CPP_LLAMA_LOG"):
                log.warning(text.decode("utf-8", "replace").rstrip())

        _state["callback"] = _log  # keep a reference: ctypes would free it
        llama_cpp.llama_log_set(_log, ctypes.c_void_p(0))
        llama_cpp.llama_backend_init()
        _state["ready"] = True
    return llama_cpp


def our_patches() -> list[str]:
    """Our llama.cpp patches (patches/) in the installed llama-cpp-python: none in a registry build."""
    import llama_cpp

    f = Path(llama_cpp.__file__).with_name("moondream_cpp_patches.txt")
    return f.read_text().split() if f.is_file() else []


def mtmd():
    llama()
    from llama_cpp import mtmd_cpp

    if not _state.get("mtmd_ready"):
        mtmd_cpp.mtmd_log_set(_state["callback"], ctypes.c_void_p(0))
        mtmd_cpp.mtmd_helper_log_set(_state["callback"], ctypes.c_void_p(0))
        _state["mtmd_ready"] = True
    return mtmd_cpp


@contextmanager
def deferred_interrupt():
    """Hold Ctrl-C until the block ends. llama.cpp calls back into Python to log; a KeyboardInterrupt raised inside
    that ctypes callback would be swallowed (with a traceback on stderr), so native loading defers it instead."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    hit = []
    old = signal.signal(signal.SIGINT, lambda *_: hit.append(True))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if hit:
        raise KeyboardInterrupt
