"""The 2025 converter and the checks that accept its files (docs/architecture.md §9): what the files hold (read back
with gguf-py against the safetensors read with safetensors/torch), the pass-through projector on the real llama.cpp,
the types each part is quantized to, and the refusals: checkpoints we cannot convert, files llama.cpp must not see."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from conftest import CLI, rel
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize
from safetensors.torch import load_file

from moondream_cpp import Moondream, gguf_check, spec2025
from moondream_cpp.convert import convert
from moondream_cpp.errors import CheckpointError, ModelFileError

GPT2, STARMIE = "2025-04-14", "2025-06-21"


def ck_dtype(revision):
    return "bf16" if revision == STARMIE else "f16"  # as conftest's pair2025 makes them


@pytest.fixture(scope="module")
def source(checkpoint2025):
    """revision -> {name: float32 array} of the checkpoint, read by safetensors' own loader."""
    cache = {}

    def get(revision):
        if revision not in cache:
            path = checkpoint2025(revision, ck_dtype(revision)) / "model.safetensors"
            cache[revision] = {k: v.float().numpy() for k, v in load_file(str(path)).items()}
        return cache[revision]

    return get


def tensors_of(path) -> dict[str, np.ndarray]:
    """Float tensors of a GGUF (f32/f16 as stored, PyTorch order), read by gguf-py."""
    out = {}
    for t in GGUFReader(path).tensors:
        if t.tensor_type in (Q.F32, Q.F16):
            out[t.name] = np.asarray(t.data, np.float32).reshape(tuple(int(n) for n in reversed(t.shape)))
    return out


def fields_of(path) -> dict:
    return {k: f.contents() for k, f in GGUFReader(path).fields.items() if not k.startswith("GGUF.")}


# ------------------------------------------------------------------------------------------------ what the files hold
@pytest.mark.parametrize("revision", [GPT2, STARMIE])
def test_text_file_keys_tokenizer_and_tensors(pair2025, checkpoint2025, source, revision):
    text, _ = pair2025(revision, "f32", "f32")
    rev, k = spec2025.REVISIONS_2025[revision], fields_of(text)
    assert k["general.architecture"] == "phi2" and k["moondream.revision"] == revision
    assert k[spec2025.MD_FAMILY] == "2025" and k[spec2025.MD_TOKENIZER_KIND] == rev.tokenizer
    assert k[spec2025.MD_PREFIX_ROWS] == 1 + 27 * 27 == 730
    assert k["moondream.max_new_tokens"] == rev.max_tokens and k["moondream.stop_rule"] == "eos"
    assert k["moondream.prompt.image_markers"] is False
    assert k["phi2.embedding_length"] == 80 and k["phi2.rope.dimension_count"] == 10  # half of each 20-wide head
    assert k["tokenizer.ggml.bos_token_id"] == k["tokenizer.ggml.eos_token_id"] == rev.bos
    tokens, types = k["tokenizer.ggml.tokens"], k["tokenizer.ggml.token_type"]
    assert len(tokens) == 51200
    if revision == STARMIE:
        from tokenizers import Tokenizer

        path = checkpoint2025(revision, ck_dtype(revision)) / spec2025.STARMIE_IN_CHECKPOINT
        assert k[spec2025.MD_TOKENIZER_JSON] == path.read_text()  # stored whole
        tok = Tokenizer.from_file(str(path))
        n = tok.get_vocab_size(with_added_tokens=True)
        assert tokens[:n] == [tok.id_to_token(i) for i in range(n)] and tokens[0] == "<|endoftext|>"
        assert set(types[n:]) == {5} and types[0] == 3  # pads UNUSED, the specials CONTROL
        assert k["tokenizer.ggml.pre"] == "default"
    else:
        assert spec2025.MD_TOKENIZER_JSON not in k and tokens[50256] == "<|endoftext|>"
        assert k["tokenizer.ggml.pre"] == "phi-2"
    got, want = tensors_of(text), source(revision)
    assert np.array_equal(got["token_embd.weight"], want["model.text.wte"])
    assert np.array_equal(got["blk.1.attn_qkv.weight"], want["model.text.blocks.1.attn.qkv.weight"])
    assert np.array_equal(got["blk.0.ffn_up.weight"], want["model.text.blocks.0.mlp.fc1.weight"])
    assert np.array_equal(got["output.bias"], want["model.text.lm_head.bias"])
    assert len(got) == 5 + 10 * 2


@pytest.mark.parametrize("revision", [GPT2, STARMIE])
def test_mmproj_tower_passthrough_and_extra_tensors(pair2025, source, revision):
    _, mmproj = pair2025(revision, "f32", "f32")
    k, got, want = fields_of(mmproj), tensors_of(mmproj), source(revision)
    assert k["clip.projector_type"] == "mlp" and k["clip.vision.projection_dim"] == 80
    assert k["clip.vision.block_count"] == 28 and k["clip.vision.image_size"] == 378
    assert k["clip.vision.attention.layer_norm_epsilon"] == pytest.approx(1e-5)
    assert k["clip.vision.feed_forward_length"] == 224  # 200 padded to a multiple of 32
    assert (k[spec2025.MD_FAMILY], k["moondream.revision"], k[spec2025.MD_MAX_CROPS], k[spec2025.MD_OVERLAP_MARGIN],
            k[spec2025.MD_FEATURE_LENGTH], k[spec2025.MD_PASSTHROUGH]) == ("2025", revision, 12, 4, 72, True)
    V = "model.vision."
    qkv = want[V + "blocks.26.attn.qkv.weight"]
    for j, part in enumerate("qkv"):  # the last block twice, q/k/v split
        for blk in (26, 27):
            assert np.array_equal(got[f"v.blk.{blk}.attn_{part}.weight"], qkv[72 * j: 72 * (j + 1)])
    fc1 = got["v.blk.3.ffn_down.weight"]
    assert np.array_equal(fc1[:200], want[V + "blocks.3.mlp.fc1.weight"]) and not fc1[200:].any()
    assert np.array_equal(got["v.patch_embd.weight"].reshape(72, -1), want[V + "patch_emb.weight"])
    for hf, gg in spec2025.PROJECTOR_TENSORS.items() | spec2025.REGION_TENSORS.items():
        assert np.array_equal(got[gg].reshape(want[hf].shape), want[hf]), gg
    # the pass-through: identity in, [I; 0] out, a lift past GELU's identity threshold and back
    w, b = want[V + "post_ln.weight"], want[V + "post_ln.bias"]
    lift = math.ceil(math.sqrt(72)) * np.abs(w) + np.abs(b) + 16
    assert np.array_equal(got["mm.0.weight"], np.eye(72)) and np.allclose(got["mm.0.bias"], lift, rtol=1e-6)
    assert np.array_equal(got["mm.2.weight"], np.vstack([np.eye(72), np.zeros((8, 72))]))
    assert np.array_equal(got["mm.2.bias"], np.concatenate([-got["mm.0.bias"], np.zeros(8)]))
    assert got["mm.0.bias"].min() >= 16


def crop378(seed=5) -> np.ndarray:
    """A 378x378 bitmap: the global crop of a 378² image is the image itself."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:378, 0:378]
    a = np.stack([x * 255 / 378, y * 255 / 378, (x * 7 + y * 3) % 256], -1) + rng.normal(0, 25, (378, 378, 3))
    return np.clip(a, 0, 255).astype(np.uint8)


def rewrite(src, dst, keys=None, tensors=None, drop=()):
    """src with keys set ({name: (value, type, subtype)}), tensors replaced (f32 arrays) and `drop` removed;
    everything else copied as stored. Written here with gguf-py, not with the code under test."""
    r = GGUFReader(src)
    w = GGUFWriter(dst, r.fields["general.architecture"].contents())
    keys, tensors = keys or {}, tensors or {}
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or name in drop or name in keys:
            continue
        w.add_key_value(name, f.contents(), f.types[0], f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None)
    for name, (value, vtype, sub) in keys.items():
        w.add_key_value(name, value, vtype, sub)
    for t in r.tensors:
        if t.name in drop:
            continue
        if t.name in tensors:
            w.add_tensor(t.name, np.ascontiguousarray(tensors[t.name]))
        elif t.tensor_type in (Q.F32, Q.F16):
            w.add_tensor(t.name, np.asarray(t.data))
        else:  # gguf-py hands other types over as bytes, [..., bytes per row]
            w.add_tensor(t.name, np.asarray(t.data), raw_dtype=Q(t.tensor_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return dst


def mtmd_rows(text, mmproj, pixels) -> np.ndarray:
    with Moondream.load(text, mmproj, n_threads=2) as md:
        with md.vision.session() as encode_crop:
            return encode_crop(pixels)


def test_passthrough_hands_out_the_features_on_llama_cpp(pair2025, reference2025, tmp_path, capsys):
    """mtmd on our mmproj: its rows are the tower's post_ln features (within the tower's own f32 error against the
    PyTorch reference), then exact zeros. The lift is what makes it a pass-through: a larger one changes nothing
    beyond f32 rounding of x + B, none (B = 0) leaves GELU bending the features far off."""
    text, mmproj = pair2025(GPT2, "f32", "f32")
    pixels = crop378()
    want = reference2025(GPT2).encode_crops(pixels[None])[0].numpy()
    rows = mtmd_rows(text, mmproj, pixels)
    assert rows.shape == (729, 80) and np.all(rows[:, 72:] == 0)
    err = rel(rows[:, :72], want)
    lift = tensors_of(mmproj)["mm.0.bias"]
    higher = rewrite(mmproj, tmp_path / "higher.gguf", tensors={
        "mm.0.bias": lift + 64, "mm.2.bias": np.concatenate([-(lift + 64), np.zeros(8, np.float32)])})
    none = rewrite(mmproj, tmp_path / "none.gguf", tensors={"mm.0.bias": np.zeros(72, np.float32),
                                                             "mm.2.bias": np.zeros(80, np.float32)})
    rows_higher, rows_none = mtmd_rows(text, higher, pixels), mtmd_rows(text, none, pixels)
    drift = float(np.abs(rows_higher - rows).max())
    err_none = rel(rows_none[:, :72], want)
    with capsys.disabled():
        print(f"\npass-through: features vs reference {err:.2e} rel; lift +64 moves them {drift:.1e} at most "
              f"(|x| up to {np.abs(rows).max():.1f}); without the lift {err_none:.2e} rel")
    assert err < 1e-3
    assert drift <= 2 * np.spacing(np.float32(lift.max() + 64 + np.abs(rows).max()))  # one rounding of x + B
    assert err_none > 0.05


# ------------------------------------------------------------------------------------------------ quantization
def test_every_part_quantized_and_the_passthrough_kept_f32(pair2025, source, capsys):
    want = source(GPT2)
    lines = []
    for mtype in ("q8_0", "bf16", "q4_0"):
        _, mmproj = pair2025(GPT2, "q8_0", mtype)
        types = {t.name: t for t in GGUFReader(mmproj).tensors}
        assert {types[n].tensor_type for n in spec2025.PASSTHROUGH_TENSORS} == {Q.F32}
        md = {n: t for n, t in types.items() if n.startswith("md.")}
        for hf, gg in spec2025.PROJECTOR_TENSORS.items() | spec2025.REGION_TENSORS.items():
            t = md[gg]
            got = dequantize(t.data, t.tensor_type).reshape(want[hf].shape)
            tol = {Q.F32: 0, Q.F16: 1e-3, Q.BF16: 8e-3, Q.Q8_0: 1e-2, Q.Q4_0: 0.2}[t.tensor_type]
            assert rel(got, want[hf]) <= tol, (gg, t.tensor_type.name)
        # the runtime's reader: what gguf_check allows must be what gguf-py can dequantize
        gguf_check.check_mmproj(mmproj)
        by_type = {}
        for n, t in md.items():
            by_type.setdefault(t.tensor_type.name, []).append(n.removeprefix("md."))
        lines.append(f"{mtype}: " + "; ".join(f"{ty}: {len(ns)}" for ty, ns in sorted(by_type.items())))
        if mtype != "bf16":  # 32-block types: the region encoders (32, 64 columns) are quantized
            assert types["md.region.coord_encoder.weight"].tensor_type != Q.F16
    with capsys.disabled():
        print("\nmd.* tensor types per mmproj type:\n  " + "\n  ".join(lines))


# ------------------------------------------------------------------------------------------------ refusals: checkpoints
def test_checkpoint_refusals(checkpoint2025, tmp_path):
    src = checkpoint2025(STARMIE, "bf16")
    with pytest.raises(CheckpointError, match="does not say which revision.*2025-01-09, 2025-03-27, 2025-04-14, "
                                              "2025-06-21"):
        convert(src, tmp_path / "o1", "f32", "f32")
    with pytest.raises(CheckpointError, match="'2024-05-08' is not a 2025 revision"):
        convert(src, tmp_path / "o1", "f32", "f32", revision="2024-05-08")
    ck = tmp_path / "ck"
    shutil.copytree(src, ck)
    moved = tmp_path / "elsewhere.json"
    shutil.move(ck / spec2025.STARMIE_IN_CHECKPOINT, moved)
    with pytest.raises(CheckpointError, match=r"looked for at .*starmie-v1/tokenizer.json.*moondream-cpp pull "
                                              r"moondream2.*--tokenizer PATH"):
        convert(ck, tmp_path / "o2", "f32", "f32", revision=STARMIE)
    assert not (tmp_path / "o2").exists() or not list((tmp_path / "o2").iterdir())
    out = convert(ck, tmp_path / "o3", "f32", "f32", revision=STARMIE, tokenizer=moved)
    assert gguf_check.check_text(out.text).tokenizer_json == moved.read_text()
    cfg = json.loads((ck / "config.json").read_text())
    cfg["config"]["text"]["n_layers"] = 3
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="2 text blocks but config.json says .* 3"):
        convert(ck, tmp_path / "o4", "f32", "f32", revision=STARMIE, tokenizer=moved)
    cfg["config"]["text"]["n_layers"] = 2
    cfg["config"]["vision"]["enc_dim"] = 64
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="patch_emb.weight has shape .72, 588., but config.json"):
        convert(ck, tmp_path / "o4", "f32", "f32", revision=STARMIE, tokenizer=moved)


@pytest.mark.parametrize("edit,message", [
    (lambda w: w.pop("model.region.size_features"), "missing 1 tensor.*size_features"),
    (lambda w: w.update({"model.region.extra": np.zeros(2, np.float16)}), "does not know.*model.region.extra"),
])
def test_missing_or_unknown_tensors_are_refused(checkpoint2025, tmp_path, edit, message):
    from safetensors.numpy import load_file as load_np
    from safetensors.numpy import save_file

    ck = tmp_path / "ck"
    shutil.copytree(checkpoint2025(GPT2, "f16"), ck)
    w = load_np(str(ck / "model.safetensors"))
    edit(w)
    save_file(w, str(ck / "model.safetensors"))
    with pytest.raises(CheckpointError, match=message):
        convert(ck, tmp_path / "o", "f32", "f32", revision=GPT2)


@pytest.mark.parametrize("edit,message", [
    (lambda c: c["config"]["text"].update(rope_theta=5), r"config.text has key\(s\) \['rope_theta'\]"),
    (lambda c: c["config"].update(moe={"num_experts": 64}), "config.moe is not part of a moondream2 2025 model"),
    (lambda c: c["config"].update(tokenizer={"eos_id": 2}), "config.tokenizer sets token ids"),
    (lambda c: c["config"]["text"].update(group_size=128), "group_size is set: this is a quantized"),
    (lambda c: c["config"]["vision"].update(overlap_margin=14), "an overlap margin of 14 patches in a 27-patch crop"),
    (lambda c: c["config"]["text"].update(prefix_attn=729), r"a prefix of 729 rows, but BOS \+ the 27x27"),
    (lambda c: c["config"]["text"].update(n_heads="4"), "n_heads is '4', not a whole number"),
])
def test_config_json_refusals(checkpoint2025, tmp_path, edit, message):
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint2025(GPT2, "f16"), ck)
    cfg = json.loads((ck / "config.json").read_text())
    edit(cfg)
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=message):
        convert(ck, tmp_path / "o", "f32", "f32", revision=GPT2)
    assert not (tmp_path / "o").exists()


def test_config_json_may_spell_out_upstreams_defaults(checkpoint2025, tmp_path):
    """Upstream's own names with its 16-bit values (group_size None) and an empty tokenizer section convert."""
    ck = tmp_path / "ck"
    shutil.copytree(checkpoint2025(GPT2, "f16"), ck)
    cfg = json.loads((ck / "config.json").read_text())
    cfg["config"]["text"]["group_size"] = None
    cfg["config"]["tokenizer"] = {}
    (ck / "config.json").write_text(json.dumps(cfg))
    out = convert(ck, tmp_path / "o", "f16", "f16", revision=GPT2)
    assert gguf_check.check_pair(out.text, out.mmproj)[0].revision_name == GPT2


def test_cli_without_revision_names_the_choices(checkpoint2025, tmp_path):
    r = subprocess.run([CLI, "convert", str(checkpoint2025(GPT2, "f16")), "-o", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 3 and "Traceback" not in r.stderr
    assert "--revision, one of: 2025-01-09, 2025-03-27, 2025-04-14, 2025-06-21" in r.stderr


# ------------------------------------------------------------------------------------------------ refusals: files
def _t(value):
    return (value, GGUFValueType.STRING, None)


@pytest.mark.parametrize("part,edit,message", [
    ("mmproj", dict(tensors={"md.proj.fc1.weight": np.zeros((184, 80), np.float32)}),
     r"md.proj.fc1.weight has shape \(184, 80\), expected \(184, 144\)"),
    ("mmproj", dict(drop=("md.region.size_features",)), "missing tensor.*md.region.size_features"),
    ("mmproj", dict(drop=("md.proj.fc1.weight",)), "missing tensor.*md.proj.fc1.weight"),
    ("mmproj", dict(tensors={"mm.0.weight": np.eye(72, dtype=np.float16)}), "mm.0.weight is stored as F16"),
    ("mmproj", dict(keys={"moondream.vision.passthrough": (False, GGUFValueType.BOOL, None)}), "passthrough is not"),
    ("mmproj", dict(keys={"moondream.revision": _t("2025-13-01")}), "'2025-13-01', not a 2025 revision"),
    ("mmproj", dict(keys={"moondream.vision.overlap_margin": (14, GGUFValueType.UINT32, None)}), "margin of 0..13"),
    ("mmproj", dict(keys={"moondream.vision.max_crops": ("12", GGUFValueType.STRING, None)}), "has type STRING"),
    ("text", dict(keys={"moondream.tokenizer.json": _t('{"model": {')}), "tokenizer.json is not valid JSON"),
    ("text", dict(drop=("moondream.tokenizer.json",)), "tokenizer.json is missing"),
    ("text", dict(keys={"moondream.revision": _t("2025-13-01")}), "not a 2025 revision this moondream-cpp knows"),
    ("text", dict(keys={"moondream.tokenizer.kind": _t("gpt2")}), "uses 'starmie'"),
    ("text", dict(keys={"moondream.family": _t("2026")}), "moondream.family is '2026'"),
    ("text", dict(keys={"moondream.prefix_attention_rows": (100, GGUFValueType.UINT32, None)}), "100-row prefix"),
])
def test_hostile_2025_files_get_a_clear_error_before_llama_cpp(pair2025, tmp_path, part, edit, message):
    text, mmproj = pair2025(STARMIE, "f32", "f32")
    if part == "text":
        text = rewrite(text, tmp_path / "text.gguf", **edit)
    else:
        mmproj = rewrite(mmproj, tmp_path / "mmproj.gguf", **edit)
    with pytest.raises(ModelFileError, match=message):
        gguf_check.check_pair(text, mmproj)
    with pytest.raises(ModelFileError, match=message):  # the load checks before llama.cpp opens a file
        Moondream.load(text, mmproj, n_threads=1)


def test_pair_of_two_families_or_revisions_is_refused(pair2025, converted):
    text25, mm25 = pair2025(STARMIE, "f32", "f32")
    _, mm_other = pair2025(GPT2, "f32", "f32")
    text24, mm24 = converted("2024-04-02", "f32", "f32")
    with pytest.raises(ModelFileError, match="do not belong together.*2025-06-21.*2025-04-14"):
        gguf_check.check_pair(text25, mm_other)
    with pytest.raises(ModelFileError, match="do not belong together"):
        gguf_check.check_pair(text24, mm25)
    with Moondream.load(text25, mm25, n_threads=1) as md:  # llama.cpp loads the starmie vocabulary copy
        assert md.tokenize("a red car") and md.text_info.tokenizer_kind == "starmie"
    info, mm = gguf_check.check_pair(text25, mm25)
    assert (info.family, info.revision_name, info.tokenizer_kind, info.prefix_rows) == ("2025", STARMIE, "starmie", 730)
    assert (mm.family, mm.revision_name, mm.feature_length, mm.max_crops, mm.overlap_margin, mm.passthrough,
            mm.crop_size, mm.n_embd_out) == ("2025", STARMIE, 72, 12, 4, True, 378, 80)
    info24, mm24 = gguf_check.check_pair(text24, mm24)
    assert (info24.family, info24.tokenizer_json, info24.prefix_rows, mm24.family, mm24.passthrough) == \
        ("2024", None, 0, "2024", False)
