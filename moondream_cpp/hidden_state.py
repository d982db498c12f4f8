"""The one thing llama.cpp does not hand out that the 2025 region head needs: the last layer's output before
`output_norm` (llama.cpp's embeddings are taken after it, and a LayerNorm cannot be undone).

llama.cpp calls a context's eval callback (context params cb_eval) for every graph node, first asking whether we
want the node ("ask" phase), then, for a node we want, once it is computed. phi2 names each layer's output
`l_out-<layer>`; in the last layer only the rows whose logits were asked for are kept, so after a decode whose last
row wants logits, the capture holds that row. The callback is fixed when the context is made and runs for every
node of every decode: unarmed it returns at once (no foreign call), so ordinary decoding pays one Python call per
node (measured: experiments/region-callback-overhead).
"""
from __future__ import annotations

import ctypes

import numpy as np

from .errors import MoondreamError


def _ggml():
    """ggml's functions through libllama's handle (dlsym searches its dependencies: the same libggml-base)."""
    from llama_cpp import llama_cpp as lib

    g = lib._lib
    g.ggml_get_name.argtypes, g.ggml_get_name.restype = [ctypes.c_void_p], ctypes.c_char_p
    g.ggml_nrows.argtypes, g.ggml_nrows.restype = [ctypes.c_void_p], ctypes.c_int64
    g.ggml_nbytes.argtypes, g.ggml_nbytes.restype = [ctypes.c_void_p], ctypes.c_size_t
    g.ggml_backend_tensor_get.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t]
    g.ggml_backend_tensor_get.restype = None
    return lib.ggml_backend_sched_eval_callback, g


class HiddenStateCapture:
    """Install `callback` as a context's cb_eval; inside `with capture.armed():` every decode leaves the last
    layer's output rows (float32 [rows, n_embd], before output_norm) of its last micro-batch in `rows`."""

    def __init__(self, n_layer: int, n_embd: int):
        callback_type, self._g = _ggml()
        self.name = f"l_out-{n_layer - 1}".encode()
        self.n_embd = n_embd
        self.is_armed = False
        self.rows: np.ndarray | None = None
        self.callback = callback_type(self._on_eval)  # kept here: ctypes frees a callback nobody references

    def _on_eval(self, tensor, ask, _user_data) -> bool:
        if not self.is_armed:
            return not ask  # ask: not wanted; compute (never reached unarmed): True, False would stop the graph
        g = self._g
        if ask:
            return g.ggml_get_name(tensor) == self.name
        n_rows, n_bytes = g.ggml_nrows(tensor), g.ggml_nbytes(tensor)
        if n_rows > 0:
            if n_bytes != n_rows * self.n_embd * 4:  # not f32 [rows, n_embd]: leave rows unset, last_row() says so
                self.rows = None
                return True
            out = np.empty((n_rows, self.n_embd), np.float32)
            g.ggml_backend_tensor_get(tensor, out.ctypes.data, 0, n_bytes)
            self.rows = out
        return True

    def armed(self):
        return _Armed(self)

    def last_row(self) -> np.ndarray:
        """The hidden state of the last row whose logits the last decode computed (float32 [n_embd])."""
        if self.rows is None:
            raise MoondreamError("llama.cpp did not hand out the last layer's output for this model (its graph names "
                                 "no l_out tensor of the expected shape); detect and point cannot run on it")
        return self.rows[-1]


class _Armed:
    def __init__(self, capture: HiddenStateCapture):
        self.capture = capture

    def __enter__(self):
        self.capture.rows = None
        self.capture.is_armed = True
        return self.capture

    def __exit__(self, *exc):
        self.capture.is_armed = False
