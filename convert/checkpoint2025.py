"""Read a 2025 moondream2 checkpoint (HfMoondream: `model.text.*`, `model.vision.*`, `model.region.*`) lazily: the
revision the caller names (config.json does not say it), the dimensions, the tokenizer file and the tensor names,
every one checked (docs/architecture.md §9)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from moondream_cpp import spec, spec2025
from moondream_cpp.errors import CheckpointError

from .checkpoint import _shards, read_config
from .dims2025 import Dims2025, dims_from_config, expected_shapes
from .safetensors_files import SafetensorsFiles

LAYOUT_PREFIXES = ("model.text.", "model.vision.", "model.region.")


@dataclass
class Checkpoint2025:
    path: Path
    config: dict
    tensors: SafetensorsFiles
    revision: spec2025.Revision2025
    dims: Dims2025
    tokenizer: Path  # the tokenizer.json the text GGUF gets its vocabulary from

    @property
    def name(self) -> str:
        return self.config.get("moondream_name") or self.path.resolve().name

    @property
    def text(self):
        return self.dims.text

    @property
    def vision(self):
        return self.dims.vision


def is_2025_layout(names) -> bool:
    return any(n.startswith(LAYOUT_PREFIXES) for n in names)


def revision_2025(config: dict, override: str | None) -> spec2025.Revision2025:
    """The caller's revision (or our own config key): never guessed, as neither config.json nor the shapes tell."""
    choices = ", ".join(spec2025.REVISIONS_2025)
    name = override or config.get("moondream_revision")
    if name is None:
        raise CheckpointError("this is a 2025 moondream2 checkpoint (model.text.*, model.vision.*), and its "
                              f"config.json does not say which revision. Pass --revision, one of: {choices}")
    if not isinstance(name, str) or name not in spec2025.REVISIONS_2025:
        raise CheckpointError(f"revision {str(name)[:40]!r} is not a 2025 revision, but this checkpoint has the 2025 "
                              f"layout (model.text.*, model.vision.*); pass --revision, one of: {choices}")
    return spec2025.REVISIONS_2025[name]


def tokenizer_file(path: Path, rev: spec2025.Revision2025, tokenizer: str | Path | None) -> Path:
    """gpt2 revisions: the checkpoint's own tokenizer.json; starmie (06-21): moondream/starmie-v1's, which the
    model repo does not hold (`pull` puts it at spec2025.STARMIE_IN_CHECKPOINT)."""
    if tokenizer is not None:
        found = Path(tokenizer)
        if not found.is_file():
            raise CheckpointError(f"--tokenizer {found}: no such file (give the path of a tokenizer.json)")
        return found
    if rev.tokenizer == "starmie":
        found = path / spec2025.STARMIE_IN_CHECKPOINT
        if not found.is_file():
            raise CheckpointError(f"revision {rev.name} uses the {spec2025.STARMIE_REPO} tokenizer, which is not part "
                                  f"of the model repo; it was looked for at {found}. `moondream-cpp pull moondream2` "
                                  f"fetches it with the model; or download {spec2025.STARMIE_REPO}'s "
                                  f"{spec2025.TOKENIZER_FILE} and pass --tokenizer PATH")
        return found
    found = path / spec2025.TOKENIZER_FILE
    if not found.is_file():
        raise CheckpointError(f"no {spec2025.TOKENIZER_FILE} in {path}: copy the checkpoint's tokenizer files too, or "
                              "pass --tokenizer PATH")
    return found


def _expected_names(dims: Dims2025) -> set[str]:
    names = set(spec2025.TEXT_TENSORS) | set(spec2025.VISION_TENSORS) | set(spec2025.PROJECTOR_TENSORS)
    names |= set(spec2025.REGION_TENSORS)
    names |= set(spec.expand(spec2025.TEXT_BLOCK_TENSORS, dims.text.n_layer))
    return names | set(spec.expand(spec2025.VISION_BLOCK_TENSORS, dims.vision.n_layer))


def _count_blocks(names: set[str], prefix: str) -> int:
    n = 0
    while any(s.startswith(f"{prefix}{n}.") for s in names):
        n += 1
    return n


def _check_names(names: set[str], dims: Dims2025) -> None:
    for what, prefix, configured in (("text", "model.text.blocks.", dims.text.n_layer),
                                     ("vision", "model.vision.blocks.", dims.vision.n_layer)):
        found = _count_blocks(names, prefix)
        if found != configured:
            raise CheckpointError(f"the checkpoint has {found} {what} blocks but config.json says (or upstream's "
                                  f"default for a missing key is) {configured}: give the model's sizes in config.json "
                                  "\"config\" as upstream's MoondreamConfig names them")
    expected = _expected_names(dims)
    missing, unknown = sorted(expected - names), sorted(names - expected)
    if missing:
        raise CheckpointError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:3]}: it is incomplete "
                              "or not a moondream2 2025 checkpoint")
    if unknown:
        raise CheckpointError(f"checkpoint has {len(unknown)} tensor(s) moondream-cpp does not know, e.g. "
                              f"{unknown[:3]}: converting would silently drop them, so it refuses")


def _check_shapes(tensors: SafetensorsFiles, dims: Dims2025) -> None:
    for name, want in expected_shapes(dims).items():
        got = tensors.shape(name)
        if got != want:
            raise CheckpointError(f"checkpoint tensor {name} has shape {got}, but config.json's sizes (upstream's "
                                  f"defaults where a key is missing) give {want}: the checkpoint and its config.json "
                                  "do not agree")


def load_checkpoint_2025(path: str | Path, revision: str | None = None,
                         tokenizer: str | Path | None = None) -> Checkpoint2025:
    path = Path(path)
    config = read_config(path)
    tensors = SafetensorsFiles(_shards(path))
    names = set(tensors.names())
    if not is_2025_layout(names):
        raise CheckpointError(f"{path} is not a 2025 moondream2 checkpoint (no model.text.* tensors)")
    rev = revision_2025(config, revision)
    dims = dims_from_config(config)
    _check_names(names, dims)
    _check_shapes(tensors, dims)
    return Checkpoint2025(path, config, tensors, rev, dims, tokenizer_file(path, rev, tokenizer))


def checkpoint_is_2025(path: str | Path) -> bool:
    """Whether the directory holds the 2025 layout (read from the safetensors headers only)."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        return is_2025_layout(SafetensorsFiles(_shards(path)).names())
    except CheckpointError:
        return False  # the 2024 loader says what is wrong with it
