"""An asyncio SSE client that behaves like a browser's EventSource.

Raw HTTP/1.1 over a TCP stream (chunked or not), the stream parsed per the
WHATWG "event stream interpretation" rules: lines end in CRLF, LF or CR; a
field's value loses one leading space; `data` lines join with LF; `id` sets
the last event id (kept across reconnects, also from an id-only frame);
`retry` (digits only) sets the reconnection time; a blank line dispatches, and
a frame without data dispatches nothing.

Reconnecting like EventSource: after EOF or an error, wait the reconnection
time, then connect again sending `Last-Event-ID` when an id is known. One
deliberate difference: a non-200 answer (503 while a node drains) is retried
the same way instead of closing for good, as EventSource polyfills do, and is
counted. A stream that goes silent (no byte, not even a heartbeat comment) for
`stall_seconds` is counted as a stall and reconnected: a client must never
wait silently on a dead peer.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Event:
    type: str
    data: str
    id: str


class SseParser:
    """Incremental event-stream parser; `feed` bytes, get events back."""

    def __init__(self) -> None:
        self._buf = b""
        self._data: list[str] = []
        self._event = ""
        self._id_buffer: str | None = None
        self.last_event_id = ""
        self.retry_ms: int | None = None
        self.comments = 0
        self._bom_checked = False

    def reset_connection(self) -> None:
        """A new connection: drop partial lines and frames, keep the last id."""
        self._buf = b""
        self._data = []
        self._event = ""
        self._id_buffer = None
        self._bom_checked = False

    def feed(self, chunk: bytes) -> list[Event]:
        self._buf += chunk
        if not self._bom_checked and len(self._buf) >= 3:
            if self._buf.startswith(b"\xef\xbb\xbf"):
                self._buf = self._buf[3:]
            self._bom_checked = True
        out: list[Event] = []
        buf = self._buf
        start = 0
        n = len(buf)
        while start < n:
            # Find the next line end: CRLF, LF or CR.
            lf = buf.find(b"\n", start)
            cr = buf.find(b"\r", start)
            if lf == -1 and cr == -1:
                break
            if cr != -1 and (lf == -1 or cr < lf):
                if cr + 1 == n:
                    break  # might be CRLF split across reads
                end, nxt = cr, (cr + 2 if buf[cr + 1 : cr + 2] == b"\n" else cr + 1)
            else:
                end, nxt = lf, lf + 1
            line = buf[start:end].decode("utf-8", "replace")
            start = nxt
            ev = self._line(line)
            if ev is not None:
                out.append(ev)
        self._buf = buf[start:]
        return out

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line[0] == ":":
            self.comments += 1
            return None
        if ":" in line:
            name, value = line.split(":", 1)
            if value.startswith(" "):
                value = value[1:]
        else:
            name, value = line, ""
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id_buffer = value
        elif name == "retry":
            if value.isascii() and value.isdigit():
                self.retry_ms = int(value)
        return None

    def _dispatch(self) -> Event | None:
        if self._id_buffer is not None:
            self.last_event_id = self._id_buffer
        self._id_buffer = None
        if not self._data:
            self._event = ""
            return None
        ev = Event(type=self._event or "message", data="\n".join(self._data), id=self.last_event_id)
        self._data = []
        self._event = ""
        return ev


class ChunkedDecoder:
    """Incremental HTTP/1.1 chunked transfer decoding."""

    def __init__(self) -> None:
        self._buf = b""
        self._remaining = 0  # bytes of chunk data still to read
        self._need_crlf = False
        self.done = False

    def feed(self, chunk: bytes) -> bytes:
        self._buf += chunk
        out = bytearray()
        while not self.done:
            if self._remaining:
                take = self._buf[: self._remaining]
                out += take
                self._buf = self._buf[len(take) :]
                self._remaining -= len(take)
                if self._remaining:
                    break
                self._need_crlf = True
            if self._need_crlf:
                if len(self._buf) < 2:
                    break
                self._buf = self._buf[2:]
                self._need_crlf = False
            i = self._buf.find(b"\r\n")
            if i == -1:
                break
            size = int(self._buf[:i].split(b";", 1)[0].strip() or b"0", 16)
            self._buf = self._buf[i + 2 :]
            if size == 0:
                self.done = True
                break
            self._remaining = size
        return bytes(out)


@dataclass
class ClientStats:
    connects: int = 0
    reconnects: int = 0
    http_errors: dict[int, int] = field(default_factory=dict)
    io_errors: int = 0
    stalls: int = 0
    served_by: list[str] = field(default_factory=list)
    # (monotonic time, node) of each stream opened, to name the node that
    # served a client at any moment.
    timeline: list[tuple[float, str]] = field(default_factory=list)
    first_event_at: float | None = None
    last_event_at: float | None = None
    max_event_gap: float = 0.0
    max_silence: float = 0.0
    resets: int = 0


class SseClient:
    """One EventSource-like subscriber; call `run(stop)` as a task.

    `on_event(client, event)` is called for each dispatched event.
    """

    def __init__(
        self,
        name: str,
        port: int,
        path: str,
        host: str = "127.0.0.1",
        on_event: Callable[["SseClient", Event], None] | None = None,
        stall_seconds: float = 10.0,
        default_retry_ms: int = 1000,
        last_event_id: str = "",
    ):
        self.name = name
        self.host = host
        self.port = port
        self.path = path
        self.on_event = on_event
        self.stall_seconds = stall_seconds
        self.parser = SseParser()
        self.parser.last_event_id = last_event_id
        self.retry_ms = default_retry_ms
        self.stats = ClientStats()
        self.connected = asyncio.Event()  # set once the first stream is open
        self.current_server: str | None = None
        self.open = False
        self._last_byte_at: float | None = None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                await self._one_connection(stop)
            except (OSError, asyncio.IncompleteReadError, ValueError, ConnectionError):
                self.stats.io_errors += 1
            except asyncio.TimeoutError:
                self.stats.stalls += 1
            finally:
                self.open = False
                self.current_server = None
            if stop.is_set():
                break
            if self.parser.retry_ms is not None:
                self.retry_ms = self.parser.retry_ms
            try:
                await asyncio.wait_for(stop.wait(), self.retry_ms / 1000)
            except asyncio.TimeoutError:
                pass

    async def _one_connection(self, stop: asyncio.Event) -> None:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), 5)
        try:
            self.parser.reset_connection()
            if self.stats.connects:
                self.stats.reconnects += 1
            self.stats.connects += 1
            headers = [
                f"GET {self.path} HTTP/1.1",
                f"Host: {self.host}:{self.port}",
                "Accept: text/event-stream",
                "Cache-Control: no-cache",
            ]
            if self.parser.last_event_id:
                headers.append(f"Last-Event-ID: {self.parser.last_event_id}")
            writer.write(("\r\n".join(headers) + "\r\n\r\n").encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.stall_seconds)
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            hdrs: dict[str, str] = {}
            for ln in lines[1:]:
                if ":" in ln:
                    k, v = ln.split(":", 1)
                    hdrs[k.strip().lower()] = v.strip()
            if status != 200 or not hdrs.get("content-type", "").startswith("text/event-stream"):
                self.stats.http_errors[status] = self.stats.http_errors.get(status, 0) + 1
                return
            server = hdrs.get("x-served-by", "?")
            self.current_server = server
            self.stats.served_by.append(server)
            self.stats.timeline.append((time.monotonic(), server))
            self.open = True
            chunked = "chunked" in hdrs.get("transfer-encoding", "").lower()
            decoder = ChunkedDecoder() if chunked else None
            self._last_byte_at = None
            self._mark_byte()
            self.connected.set()
            stop_wait = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    read = asyncio.ensure_future(reader.read(65536))
                    done, _ = await asyncio.wait({read, stop_wait}, timeout=self.stall_seconds, return_when=asyncio.FIRST_COMPLETED)
                    if stop_wait in done:
                        read.cancel()
                        return
                    if read not in done:
                        read.cancel()
                        raise asyncio.TimeoutError()
                    data = read.result()
                    if not data:
                        return  # EOF
                    self._mark_byte()
                    if decoder is not None:
                        data = decoder.feed(data)
                    for ev in self.parser.feed(data):
                        self._got_event(ev)
                    if decoder is not None and decoder.done:
                        return
            finally:
                stop_wait.cancel()
        finally:
            writer.close()
            try:
                await asyncio.wait_for(writer.wait_closed(), 1)
            except Exception:  # noqa: BLE001 - the peer may be gone
                pass

    def server_at(self, t: float) -> str:
        """The node whose stream this client had open (or last had) at `t`."""
        server = "none yet"
        for opened, name in self.stats.timeline:
            if opened > t:
                break
            server = name
        return server

    def _mark_byte(self) -> None:
        now = time.monotonic()
        if self._last_byte_at is not None and self.open:
            self.stats.max_silence = max(self.stats.max_silence, now - self._last_byte_at)
        self._last_byte_at = now

    def _got_event(self, ev: Event) -> None:
        now = time.monotonic()
        s = self.stats
        if ev.type == "reset":
            s.resets += 1
        if s.last_event_at is not None:
            s.max_event_gap = max(s.max_event_gap, now - s.last_event_at)
        else:
            s.first_event_at = now
        s.last_event_at = now
        if self.on_event:
            self.on_event(self, ev)
