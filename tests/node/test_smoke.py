from __future__ import annotations

import io

import trio

from node.client import FileSystem, NodeApi, login
from tests.node.conftest import PASSWORD


async def read_all(fs: FileSystem, path: str, offset: int = 0, length: int | None = None) -> bytes:
    async with fs.read(path, offset, length) as pieces:
        return b"".join([piece async for piece in pieces])


async def test_smoke(api: NodeApi, fs: FileSystem) -> None:
    with trio.fail_after(60):
        await fs.mkdir("docs")
        await fs.write_file("docs/a.txt", io.BytesIO(b"hello"))
        assert [x.name for x in await fs.listdir("docs")] == ["a.txt"]
        assert await read_all(fs, "/alice/docs/a.txt") == b"hello"
        session = await login(api, "alice", PASSWORD)
        again = FileSystem(session)
        assert await read_all(again, "docs/a.txt") == b"hello"
