"""schn: visual similarity search with learned binary codes."""

__version__ = "0.1.0"
