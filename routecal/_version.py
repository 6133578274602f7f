"""The package version (one place; `routecal.__version__` and results.json's versions read it)."""

__version__ = "0.1.0"
