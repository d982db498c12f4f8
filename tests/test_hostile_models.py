"""GGUF files built to abort llama.cpp (SIGABRT takes the whole process, the server included) are refused with a
ModelFileError before llama.cpp sees them; headers that lie about their sizes are refused without a traceback and
without being read whole; a seeded fuzz of the demo pair's headers neither crashes nor hangs the CLI.

Each crafted file is also given to llama.cpp itself, in a child process: the abort it causes there is what the
check prevents."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, GGUFWriter
from gguf import GGUFValueType as T

from moondream_cpp import Moondream, gguf_check
from moondream_cpp.errors import ModelFileError
from moondream_cpp.gguf_models import DEMO_2024, demo_pair
from conftest import CLI

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from gguf_bytes import KV, Raw, dumps, loads  # noqa: E402

TEXT, MMPROJ = demo_pair(DEMO_2024)  # f16 files of a 2024 moondream: the crafted cases start from them


def rewrite(src: Path, dst: Path, keys=(), tensor_types=None) -> Path:
    """src rewritten by gguf-py with `keys` ((key, value, type, element type)) set or added; `tensor_types`:
    {name: numpy dtype} to store a tensor in another float type."""
    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    sets = {k: (v, t, s) for k, v, t, s in keys}
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        value, vtype, sub = sets.pop(name, (f.contents(), f.types[0], f.types[-1] if f.types[0] == T.ARRAY else None))
        w.add_key_value(name, value, vtype, sub)
    for name, (value, vtype, sub) in sets.items():
        w.add_key_value(name, value, vtype, sub)
    for t in r.tensors:
        data = np.asarray(t.data)
        if tensor_types and t.name in tensor_types:
            data = data.astype(tensor_types[t.name])
            w.add_tensor(t.name, data)
        else:
            w.add_tensor(t.name, data, raw_shape=tuple(reversed([int(x) for x in t.shape])), raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


# what llama.cpp does with a pair, in a child of a child: a model load, a decode, the vision tower, an image
NATIVE = r"""
import ctypes, json, os, sys
import llama_cpp as L
from llama_cpp import mtmd_cpp as M
L.llama_backend_init()

def run(text, mmproj):
    m = L.llama_model_load_from_file(text.encode(), L.llama_model_default_params())
    if not m:
        return 3
    cp = L.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_threads, cp.n_threads_batch = 256, 64, 64, 1, 1
    ctx = L.llama_init_from_model(m, cp)
    toks = (L.llama_token * 3)(1, 2, 3)
    if not ctx or L.llama_decode(ctx, L.llama_batch_get_one(toks, 3)):
        return 3
    p = M.mtmd_context_params_default()
    p.use_gpu, p.warmup, p.n_threads = False, False, 1
    mc = M.mtmd_init_from_file(mmproj.encode(), m, p)
    if not mc:
        return 3
    size = 112
    buf = (ctypes.c_ubyte * (size * size * 3))()
    bitmap = M.mtmd_bitmap_init(size, size, buf)
    chunks = M.mtmd_input_chunks_init()
    part = M.mtmd_input_part(text=None, bitmap=bitmap)
    parts = (ctypes.POINTER(M.mtmd_input_part) * 1)(ctypes.pointer(part))
    if M.mtmd_tokenize_from_parts(mc, chunks, parts, 1, False):
        return 3
    return 3 if M.mtmd_encode_chunk(mc, M.mtmd_input_chunks_get(chunks, 0)) else 0

out = []
for text, mmproj in json.loads(sys.argv[1]):
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(run(text, mmproj))
    _, status = os.waitpid(pid, 0)
    out.append(-os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status))
print(json.dumps(out))
"""


def native_outcomes(pairs) -> list[int]:
    """Per (text, mmproj): llama.cpp's exit (0 ran, 3 refused) or minus the signal that killed it."""
    r = subprocess.run([sys.executable, "-c", NATIVE, json.dumps([[str(a), str(b)] for a, b in pairs])],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "GGML_NO_BACKTRACE": "1"})
    return json.loads(r.stdout.strip().splitlines()[-1])


ABORT = -6  # SIGABRT

# (file, keys, tensor types, what our check says) of files that pass a type check and abort llama.cpp
CASES = {
    "one expert": ("text", [("phi2.expert_count", 1, T.UINT32, None)], None, "phi2.expert_count"),
    "no blocks": ("text", [("phi2.block_count", 0, T.UINT32, None)], None, "block count is 0"),
    "600 blocks": ("text", [("phi2.block_count", 600, T.UINT32, None)], None, "block count is 600"),
    "bogus RoPE scaling": ("text", [("phi2.rope.scaling.type", "bogus", T.STRING, None)], None,
                           "phi2.rope.scaling.type"),
    "odd RoPE dimensions": ("text", [("phi2.rope.dimension_count", 15, T.UINT32, None)], None,
                            "15 rotary dimensions"),
    "RoPE wider than a head": ("text", [("phi2.rope.dimension_count", 64, T.UINT32, None)], None,
                               "64 rotary dimensions.*head size .32"),
    "key length not width / heads": ("text", [("phi2.attention.key_length", 16, T.UINT32, None)], None,
                                     "phi2.attention.key_length"),
    "a norm in f16": ("text", [], {"output_norm.bias": np.float16}, "output_norm.bias is stored as F16"),
    "a token twice": ("text", "duplicate token", None, "lists a token twice"),
    "audio flag as UINT8": ("mmproj", [("clip.has_audio_encoder", 1, T.UINT8, None)], None,
                            "clip.has_audio_encoder"),
    "vision heads not dividing the width": ("mmproj", [("clip.vision.attention.head_count", 5, T.UINT32, None)],
                                            None, "vision width 128 is not a multiple of the 5 heads"),
    "negative vision epsilon": ("mmproj", [("clip.vision.attention.layer_norm_epsilon", -1.0, T.FLOAT32, None)],
                                None, "epsilon -1.0"),
}


@pytest.fixture(scope="module")
def crafted(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    out = {}
    for name, (which, keys, types, _) in CASES.items():
        dst = d / f"case{len(out)}.gguf"
        if keys == "duplicate token":
            tokens = list(GGUFReader(TEXT).fields["tokenizer.ggml.tokens"].contents())
            tokens[7] = tokens[8]
            keys = [("tokenizer.ggml.tokens", tokens, T.ARRAY, T.STRING)]
        rewrite(TEXT if which == "text" else MMPROJ, dst, keys, types)
        out[name] = (dst, MMPROJ) if which == "text" else (TEXT, dst)
    return out


def test_files_that_abort_llama_cpp_are_refused(crafted):
    for name, (text, mmproj) in crafted.items():
        with pytest.raises(ModelFileError, match=CASES[name][3]):
            Moondream.load(text, mmproj, n_ctx=256)
    # the reason: llama.cpp itself dies on every one of them (and runs the untouched pair)
    outcomes = native_outcomes([(TEXT, MMPROJ), *crafted.values()])
    assert outcomes[0] == 0
    assert dict(zip(crafted, outcomes[1:])) == {name: ABORT for name in crafted}


def test_the_demo_pair_and_its_quantized_forms_pass(tmp_path):
    from moondream_cpp.convert.quantize import quantize

    gguf_check.check_pair(TEXT, MMPROJ)
    for src, qtype in [(TEXT, "q4_k_m"), (TEXT, "bf16"), (MMPROJ, "q8_0")]:
        out = tmp_path / f"{src.stem}-{qtype}.gguf"
        quantize(src, out, qtype)
        with Moondream.load(*((out, MMPROJ) if src == TEXT else (TEXT, out)), n_ctx=256, n_threads=1) as md:
            assert md.query(np.full((20, 20, 3), 90, np.uint8), "What?", max_tokens=2).tokens
    default = demo_pair()  # the 2025 demo (q8_0 text) passes the same checks and answers
    gguf_check.check_pair(*default)
    with Moondream.load(*default, n_threads=1) as md:
        assert md.family == "2025" and md.query(np.full((20, 20, 3), 90, np.uint8), "What?", max_tokens=2).tokens


def _header_case(tmp_path, name, edit, src=TEXT) -> Path:
    g = loads(src.read_bytes())
    edit(g)
    path = tmp_path / f"{name}.gguf"
    path.write_bytes(dumps(g))
    return path


def _misaligned(g) -> None:
    """general.alignment 8, a valid GGUF layout, with the data section made to start off ggml's 32-byte grid (header
    padding); llama.cpp maps tensors in place and aborts on such a file."""
    g.set("general.alignment", T.UINT32, 8)
    for pad in range(32):
        g.set("x.pad", T.STRING, "a" * pad)
        g.relayout()
        if (len(dumps(g)) - len(g.data)) % 32:
            return


HEADER_CASES = {
    "alignment 0": (lambda g: g.set("general.alignment", T.UINT32, 0), "general.alignment is 0"),
    "alignment 3": (lambda g: g.set("general.alignment", T.UINT32, 3), "not a power of two"),
    "alignment as UINT64": (lambda g: g.set("general.alignment", T.UINT64, 32), "stored as UINT32"),
    "unknown array element type": (lambda g: g.kvs.append(KV("x.y", T.ARRAY, Raw(b"\x0d\0\0\0" + bytes(8)))),
                                   "array of an unknown value type"),
    "huge array count": (lambda g: g.kvs.append(KV("x.y", T.ARRAY, Raw(b"\x04\0\0\0" + b"\xff" * 8))),
                         "cannot fit in the file"),
    "huge string length": (lambda g: g.kvs.append(KV("x.y", T.STRING, Raw((1 << 40).to_bytes(8, "little")))),
                           "runs past the end of the file"),
    "huge key count": (lambda g: setattr(g, "n_kv", 1 << 40), "cannot fit in a file"),
    "huge tensor count": (lambda g: setattr(g, "n_tensors", 1 << 62), "cannot fit in a file"),
    "string not UTF-8": (lambda g: g.set("general.name", T.STRING, Raw(b"\3\0\0\0\0\0\0\0\xff\xfe\x80")), "UTF-8"),
    "huge dimension": (lambda g: g.tensors[0].ne.__setitem__(1, 1 << 62), "impossible shape"),
    "tensor at a wrong offset": (lambda g: setattr(g.tensors[3], "offset", g.tensors[3].offset + 32),
                                 r"expected \d+ .right after the tensor before"),
    "absurd block count": (lambda g: g.set("phi2.block_count", T.UINT32, 2**32 - 1), "block count is 4294967295"),
    "a key twice": (lambda g: g.kvs.append(KV("general.name", T.STRING, "again")), "given twice"),
    "a split model": (lambda g: g.set("split.count", T.UINT16, 2), "split.count"),
    "data off the 32-byte grid": (_misaligned, "not a multiple of 32"),
    "architecture as an array": (lambda g: g.set("general.architecture", T.ARRAY, ["phi2"], T.STRING),
                                 r"architecture \['phi2'\]"),
}


@pytest.mark.parametrize("case", HEADER_CASES)
def test_lying_headers_are_a_model_file_error(tmp_path, case):
    edit, message = HEADER_CASES[case]
    path = _header_case(tmp_path, case.replace(" ", "-"), edit)
    with pytest.raises(ModelFileError, match=message):
        gguf_check.check_text(path)
    r = subprocess.run([CLI, "info", str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "Traceback" not in r.stderr, r.stderr


def test_a_huge_claimed_length_is_not_read_to_find_out(tmp_path):
    """A 2 GB (sparse) file whose header claims a 1.5 GB string: refused without reading it (the old reader grew
    its buffer to the whole file)."""
    import resource

    path = tmp_path / "big.gguf"
    with open(path, "wb") as f:  # no tensors, one key "abc": a string of 1.5 GB
        f.write(b"GGUF" + (3).to_bytes(4, "little") + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
                + (3).to_bytes(8, "little") + b"abc" + (8).to_bytes(4, "little") + (3 << 29).to_bytes(8, "little"))
        f.truncate(2 << 30)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(ModelFileError, match="larger than 128 MB"):
        gguf_check.check_text(path)
    assert time.perf_counter() - t0 < 2
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 300_000  # KB: at most the 128 MB cap


def test_a_seeded_fuzz_of_the_demo_headers_neither_crashes_nor_hangs():
    """60 mutations (scripts/fuzz_gguf.py; the full run is 2,000): each loads and answers or is refused (exit 3)."""
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "fuzz_gguf.py"), "--count", "60", "--seed", "7"],
                       capture_output=True, text=True, timeout=600)
    summary = json.loads(r.stdout)
    assert r.returncode == 0, summary["failed"]
    assert set(summary["outcomes"]) == {"answered", "refused"} and summary["count"] == 60
    assert summary["max_seconds"] < 10  # the 1 s bound is measured on a quiet machine (benchmarks/results)
