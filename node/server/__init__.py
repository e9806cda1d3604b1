"""A node's services: storage rules, accounts, quota, the PKI log, garbage collection, one method
table."""

from node.server._gc import collect_garbage
from node.server._pki import Page, PkiLog, PkiStatus, Refusal, SyncResult
from node.server._service import METHODS, NodeService, NodeSettings

__all__ = [
    "METHODS",
    "NodeService",
    "NodeSettings",
    "Page",
    "PkiLog",
    "PkiStatus",
    "Refusal",
    "SyncResult",
    "collect_garbage",
]
