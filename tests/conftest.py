"""The whole suite's set-up: the `pyrgos` commands tests run reach a command agent of the
suite's own (node/cli/_agent.py), in a private run directory, stopped when the suite ends."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from node.cli import _agent


@pytest.fixture(scope="session", autouse=True)
def _command_agent_of_the_suite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    run = tmp_path_factory.mktemp("run")
    run.chmod(0o700)
    before = os.environ.get("XDG_RUNTIME_DIR")
    os.environ["XDG_RUNTIME_DIR"] = str(run)
    try:
        yield
    finally:
        for path in run.glob("pyrgos-*/agent-*.sock"):
            _agent.stop(str(path))
        if before is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = before
