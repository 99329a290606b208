"""A fake asyncio transport for driving :class:`pyserve.server.http.Connection` without a socket
(the HTTP tests and the ``http`` fuzz target)."""

from __future__ import annotations

from typing import Any


class FakeTransport:
    """What a Connection calls on its transport, recorded: the bytes written, and whether it was
    closed (``close``, ``abort`` or a half-close by ``write_eof``)."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def write_eof(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 1) if name == "peername" else default

    def get_write_buffer_size(self) -> int:
        return 0

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def is_closing(self) -> bool:
        return self.closed
