"""A node's services: storage rules, accounts, quota, garbage collection, one method table."""

from node.server._gc import collect_garbage
from node.server._service import METHODS, NodeService, NodeSettings

__all__ = ["METHODS", "NodeService", "NodeSettings", "collect_garbage"]
