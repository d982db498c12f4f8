"""Read an HF moondream checkpoint directory lazily: config, revision, dimensions and memory-mapped tensors."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from moondream_cpp import gguf_rules, spec
from moondream_cpp.errors import CheckpointError
from moondream_cpp.gguf_check import MIN_QUESTION_POSITIONS

from .checkpoint_dims import TextDims, VisionDims, check_shapes, config_int, text_dims, valid_name, vision_dims
from .safetensors_files import SafetensorsFiles

# re-exported: where the reference model and the tests have always found them
__all__ = ["Checkpoint", "SafetensorsFiles", "TextDims", "VisionDims", "detect_revision", "load_checkpoint"]


@dataclass
class Checkpoint:
    path: Path
    config: dict
    tensors: SafetensorsFiles
    revision: spec.Revision
    text: TextDims
    vision: VisionDims

    @property
    def name(self) -> str:
        return self.config.get("moondream_name") or self.path.resolve().name


def _shards(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
            raise CheckpointError(f"{index} is not a valid index (a JSON object with a weight_map)") from None
        bad = [f for f in shards if not isinstance(f, str) or not valid_name(f) or not (path / f).is_file()]
        if bad:
            raise CheckpointError(f"{index} names shard {str(bad[0])[:80]!r}, not a file in {path}")
        return sorted(path / f for f in shards)
    single = path / "model.safetensors"
    if single.exists():
        return [single]
    found = sorted(path.glob("*.safetensors"))
    if found:
        return found
    if list(path.glob("*.bin")) or list(path.glob("*.pt")):
        raise CheckpointError(f"{path} holds PyTorch pickle weights (.bin/.pt); moondream-cpp reads only safetensors "
                              "checkpoints (the moondream1 2024-02-06 and moondream2 2024 releases are safetensors).")
    raise CheckpointError(f"no model.safetensors in {path}: point to an HF moondream checkpoint directory")


def _text_config(config: dict) -> dict:
    for key in ("text_config", "phi_config"):
        if isinstance(config.get(key), dict):
            return config[key]
    return {}


def _section(config: dict, key: str) -> dict:
    value = config.get(key)
    return value if isinstance(value, dict) else {}


def detect_revision(config: dict, override: str | None = None) -> spec.Revision:
    """The checkpoint's revision: the caller's choice, our config key, or what config.json proves; never a guess."""
    choices = ", ".join(spec.REVISIONS)
    name = override or config.get("moondream_revision")
    name = name if name is None or isinstance(name, str) else str(name)
    if name is None:
        if isinstance(config.get("text_config"), dict):
            name = "2024-05-08"  # phi_config was renamed text_config in MD@3346cd7, just before 2024-05-08
        elif "moondream1" in str(config.get("_name_or_path", "")):
            name = "moondream1"
    if name is None:
        raise CheckpointError("cannot tell which moondream revision this checkpoint is (its config.json does not say). "
                              f"Pass --revision, one of: {choices}")
    if name not in spec.REVISIONS:
        raise CheckpointError(f"unknown revision {name!r}; known revisions: {choices}")
    return spec.REVISIONS[name]


def _check_names(names: set[str], n_vision: int, n_text: int) -> None:
    expected = set(spec.TEXT_TENSORS) | set(spec.VISION_TENSORS)
    expected |= set(spec.expand(spec.TEXT_BLOCK_TENSORS, n_text))
    expected |= set(spec.expand(spec.VISION_BLOCK_TENSORS, n_vision))
    missing = sorted(expected - names)
    unknown = sorted(names - expected)
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}: "
                              "it is incomplete or not a moondream checkpoint")
    if unknown:
        raise CheckpointError(f"checkpoint has {len(unknown)} tensor(s) moondream-cpp does not know, e.g. "
                              f"{unknown[:3]}: converting would silently drop them, so it refuses")


def _count_blocks(names: set[str], prefix: str) -> int:
    n = 0
    while any(s.startswith(f"{prefix}{n}.") for s in names):
        n += 1
    return n


def read_config(path: Path) -> dict:
    """A checkpoint directory's config.json as a dict (every layout), or a CheckpointError that says what is wrong."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory: point to an HF moondream checkpoint directory")
    cfg_file = path / "config.json"
    try:
        config = json.loads(cfg_file.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"no config.json in {path}: is this an HF moondream checkpoint directory?") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_file} is not a JSON object")
    if "moondream_name" in config and not valid_name(config["moondream_name"]):
        raise CheckpointError(f"{cfg_file}: moondream_name {str(config['moondream_name'])[:60]!r} is not a plain name "
                              "(letters, digits, '.', '_', '-', '+')")
    return config


def load_checkpoint(path: str | Path, revision: str | None = None) -> Checkpoint:
    path = Path(path)
    config = read_config(path)
    cfg_file = path / "config.json"
    tensors = SafetensorsFiles(_shards(path))
    names = set(tensors.names())
    for bad, why in spec.REFUSED_TENSORS.items():
        if bad in names:
            raise CheckpointError(f"this checkpoint uses {why}; use the 2024-02-06 moondream1 or a 2024-03..05 "
                                  "moondream2 release")
    if any(n.startswith("vision_encoder.model.") or n.startswith("text_model.model.") for n in names):
        raise CheckpointError("this is the January-2024 moondream1 layout (vision_encoder.model.*), whose projector "
                              "llama.cpp cannot run; use the 2024-02-06 moondream1 release")
    if not names & set(spec.VISION_TENSORS):
        raise CheckpointError("no moondream vision tensors in this checkpoint (expected names like "
                              f"{next(iter(spec.VISION_TENSORS))}); later moondream2 formats are not supported")
    rev = detect_revision(config, revision)

    n_vision = _count_blocks(names, spec.VISION_PREFIX + "blocks.")
    n_text = _count_blocks(names, "text_model.transformer.h.")
    # multi-crop revisions (>= 2024-05-20) feed the projector 2 x vision width
    fc1_name = spec.PROJECTION_PREFIX + "fc1.weight"
    fc1 = tensors.shape(fc1_name) if fc1_name in names else ()
    patch_name = spec.VISION_PREFIX + "patch_embed.linear.weight"
    patch = tensors.shape(patch_name) if patch_name in names else ()
    if len(fc1) == 2 and len(patch) == 2 and fc1[1] == 2 * patch[0]:
        raise CheckpointError("this is a multi-crop moondream2 revision (2024-05-20 or later, projector input "
                              f"{fc1[1]} = 2 x {patch[0]}); a single llama.cpp mmproj cannot run it. "
                              "Use the 2024-05-08 or an earlier revision")
    _check_names(names, n_vision, n_text)

    vcfg, tcfg = _section(config, "vision_config"), _text_config(config)
    vision = vision_dims(tensors, config_int(vcfg, ("num_heads",), 16), n_vision)
    text = text_dims(tensors, tcfg, n_text)
    check_shapes(tensors, text, vision)
    problem = gguf_rules.text_dims_problem(n_embd=text.n_embd, n_head=text.n_head, n_head_kv=text.n_head,
                                           n_layer=text.n_layer, n_ff=text.n_ff, n_rot=text.rotary_dim,
                                           n_ctx=text.n_ctx, eps=text.eps) \
        or gguf_rules.vision_dims_problem(n_embd=vision.n_embd, n_head=vision.n_head, n_ff=spec.padded_ff(vision.n_ff),
                                          n_layer=vision.n_layer + 1, image_size=vision.image_size,
                                          patch_size=vision.patch_size, eps=rev.vision_eps)
    if problem is None and text.n_ctx < vision.n_patches + MIN_QUESTION_POSITIONS:
        problem = f"a context of {text.n_ctx} positions cannot hold the {vision.n_patches} image positions"
    if problem:
        raise CheckpointError(f"{cfg_file} and the weights give {problem}: llama.cpp could not run the converted "
                              "model; is this an unmodified moondream checkpoint?")
    return Checkpoint(path, config, tensors, rev, text, vision)
