"""An incremental reader of `text/event-stream` bytes, to observe a copy of a relayed stream."""

from __future__ import annotations


class SseParser:
    """Feed it chunks as they pass; it returns the (event name, data) of each completed event.
    Comment lines (pings) and ids are framing only and are skipped."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._scanned = 0  # bytes of _buf known to hold no newline: a 5 MB event is scanned once
        self._event = b"message"
        self._data: list[bytes] = []

    @property
    def at_line_start(self) -> bool:
        """No partial line buffered: a whole line (a comment ping) can be inserted here."""
        return not self._buf

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        self._buf += chunk
        out: list[tuple[str, bytes]] = []
        start = 0
        while (nl := self._buf.find(b"\n", max(start, self._scanned))) >= 0:
            line = bytes(self._buf[start:nl])
            start = nl + 1
            self._line(line[:-1] if line.endswith(b"\r") else line, out)
        del self._buf[:start]
        self._scanned = len(self._buf)
        return out

    def _line(self, line: bytes, out: list[tuple[str, bytes]]) -> None:
        if not line:  # a blank line dispatches the event
            if self._data:
                out.append((self._event.decode(errors="replace"), b"\n".join(self._data)))
            self._event, self._data = b"message", []
            return
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value
