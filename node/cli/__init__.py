"""The `pyrgos` command."""

from node.cli._main import main

__all__ = ["main"]
