"""The vision tower is loaded again for each new image when it is kept on demand: the mmproj file must still be the
one that was validated at load, or llama.cpp would read a file that never went through our checks."""
import os
import shutil

import numpy as np
import pytest
from PIL import Image

from moondream_cpp import Moondream
from moondream_cpp.errors import ModelFileError


def test_an_mmproj_replaced_or_rewritten_after_load_is_refused(converted, photo, tmp_path):
    text, mmproj = converted("2024-04-02", "f32", "f32")
    _, other = converted("2024-04-02", "f32", "f16")
    shutil.copy(text, tmp_path / "text.gguf")
    shutil.copy(mmproj, tmp_path / "mmproj.gguf")
    flipped = Image.fromarray(np.asarray(photo)[::-1].copy())
    with Moondream.load(tmp_path / "text.gguf", tmp_path / "mmproj.gguf", n_ctx=256, mmproj_on_demand=True) as md:
        first = md.query(photo, "What?", max_tokens=3)
        shutil.copy(other, tmp_path / "new.gguf")
        os.replace(tmp_path / "new.gguf", tmp_path / "mmproj.gguf")  # swapped under the running model
        with pytest.raises(ModelFileError, match="changed on disk after the model was loaded"):
            md.encode_image(flipped)
        assert md.query(photo, "What?", max_tokens=3).tokens == first.tokens  # encoded images still answer
    shutil.copy(mmproj, tmp_path / "mmproj.gguf")
    with Moondream.load(tmp_path / "text.gguf", tmp_path / "mmproj.gguf", n_ctx=256, mmproj_on_demand=True) as md:
        md.encode_image(photo)
        with open(tmp_path / "mmproj.gguf", "r+b") as f:  # rewritten in place: same inode, new bytes
            f.seek(-4, os.SEEK_END)
            f.write(b"\0\0\0\0")
        with pytest.raises(ModelFileError, match="changed on disk"):
            md.encode_image(flipped)
