"""The converter streams: peak memory stays far below the model's fp32 size (never the whole model as fp32)."""
import subprocess
import sys

from checkpoints import byte_tokenizer_json, make_checkpoint

# VmHWM (peak resident set of this process image; ru_maxrss would carry the parent's peak across exec)
PROBE = """
import re, sys
from moondream_cpp.convert import convert
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1)) * 1024
base = hwm()
convert(sys.argv[1], sys.argv[2], "f16", "f16")
print(base, hwm())
"""


def test_conversion_peak_memory_is_a_fraction_of_the_model(tmp_path):
    # 12 text blocks of width 1024: 151M parameters, 604 MB as fp32, no single tensor over 32 MB as fp32
    ck = make_checkpoint(tmp_path / "wide", t_embd=1024, t_layers=12, t_heads=16, tokenizer=byte_tokenizer_json())
    fp32_bytes = 4 * 12 * 12 * 1024 * 1024
    r = subprocess.run([sys.executable, "-c", PROBE, str(ck), str(tmp_path / "out")], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr
    base, peak = map(int, r.stdout.split())
    grew = peak - base
    print(f"conversion peak RSS {peak / 1e6:.0f} MB (growth {grew / 1e6:.0f} MB) for a {fp32_bytes / 1e6:.0f} MB "
          "fp32 model")
    assert grew < 0.25 * fp32_bytes
