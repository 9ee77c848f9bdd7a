"""Scene catalog layer: ingest COGs as virtual references, search scenes, open them."""

from .models import BandInfo, Catalog, Scene
from .store import RepoRef, resolve_snapshot

__all__ = ["BandInfo", "Catalog", "RepoRef", "Scene", "resolve_snapshot"]
