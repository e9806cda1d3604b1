"""The node's one LevelDB, in prefixed keyspaces; nothing else in pyrgos touches plyvel."""

from node.store._leveldb import Batch, DiskFull, Space, Store, owner_prefix

__all__ = ["Batch", "DiskFull", "Space", "Store", "owner_prefix"]
