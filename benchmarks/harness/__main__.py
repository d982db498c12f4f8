"""`python -m benchmarks.harness` (from the repo's root): this machine's slug, the folder name of its results."""
from . import machine

print(machine())
