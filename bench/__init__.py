"""The benchmark suite: `python -m bench list | assemble [--check] | NAME [args]` (bench/README.md)."""
