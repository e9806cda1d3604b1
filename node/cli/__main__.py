"""`python -m node.cli`: the `pyrgos` command (how `pyrgos swarm up` starts its nodes)."""

from node.cli import main

main()
