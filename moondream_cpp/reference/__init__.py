"""PyTorch reference implementation of moondream (optional extra `[torch]`): the yardstick for fidelity tests."""
from .model import ReferenceMoondream

__all__ = ["ReferenceMoondream"]
