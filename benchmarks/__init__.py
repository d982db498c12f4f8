"""The repo's benchmark scripts (not part of the installed package): each keeps measuring a claim the docs make.
See benchmarks/README.md."""
