"""``schn serve``: an HTTP search service (FastAPI) and web page over a local index folder."""
from .app import ServeLimits, create_app

__all__ = ["ServeLimits", "create_app"]
