"""PyTorch reference implementation of moondream (optional extra `[torch]`): the yardstick for fidelity tests."""
from .md2025 import Reference2025
from .model import ReferenceMoondream

__all__ = ["Reference2025", "ReferenceMoondream"]
