"""qffs' version, in a module of its own: anything may import it (the package itself, the
checkpoint writer, the reports, pyproject's dynamic version) without importing anything else."""

__version__ = "0.1.0"
