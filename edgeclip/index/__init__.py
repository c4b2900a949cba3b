"""``edgeclip.index``: the on-device image index.

- :mod:`.store`: the SQLite store of record (schema, connection, transactions, blobs)
- :mod:`.scan`: finding image files and hashing their bytes
- :mod:`.indexer`: bringing the database up to date with a folder (``add_folder``)
- :mod:`.search`: exact and HNSW nearest-neighbour search, and ``ImageIndex``'s search methods
- :mod:`.image_index`: :class:`ImageIndex`, which combines them
- :mod:`.cli`: ``edgeclip index`` and ``edgeclip search``
"""

from __future__ import annotations

from .image_index import ImageIndex, default_db_path, edgeclip_home
from .indexer import IndexReport
from .search import SearchResult

__all__ = ["ImageIndex", "SearchResult", "IndexReport", "default_db_path", "edgeclip_home"]
