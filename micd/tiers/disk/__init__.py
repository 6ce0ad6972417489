"""Disk tier: verified CAS blobs and KV records under a cache root shared by all of a user's daemons.

Split by concern: `layout` (paths), `lru` (pure ordering), `index` (snapshot format and reconcile),
`files` (temp files, publish), `journal` (group commit of small blobs, replay), `blob` (verified streaming reads), `evict` (victim checks), `kvfile` (record
file format), `ingest` (write-path helpers, memory budget), `usage` (the root's usage ledger, shared by all
daemons, for the hard cap), `upkeep` (LRU view, caps, eviction, rescans, snapshots: the
base class of `DiskTier`), `store` (the `DiskTier` itself: reads and writes).
"""

from micd.tiers.disk.store import DiskTier, FilesystemFull

__all__ = ["DiskTier", "FilesystemFull"]
