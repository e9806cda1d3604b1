"""The `pyrgos` command."""

from __future__ import annotations


def main(argv: list[str] | None = None) -> None:
    """`pyrgos ARGV`; with no `argv`, the process's own command line, which a running command
    agent takes over when it serves that command (node/cli/_agent.py)."""
    if argv is None:
        import sys

        from node.cli import _agent

        status = _agent.relay(sys.argv[1:])
        if status is not None:
            raise SystemExit(status)
    from node.cli._main import main as run

    run(argv)


__all__ = ["main"]
