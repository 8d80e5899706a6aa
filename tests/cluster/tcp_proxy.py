"""A TCP proxy a test controls, to cut one process off from NATS.

It listens on one loopback port per target and pipes bytes both ways. It runs
its own event loop in a thread, so it keeps working whatever the test's loop
does, and it can be used from plain sync code.

`cut()` resets every open connection and closes the listeners (new
connections are refused); `restore()` listens again on the same ports.
"""

from __future__ import annotations

import asyncio
import threading

from .harness import LOOPBACK, free_port


class TcpProxy:
    def __init__(self, target_ports: list[int]):
        self.targets = list(target_ports)
        self.ports = [free_port() for _ in self.targets]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._servers: list[asyncio.base_events.Server] = []
        self._conns: set[asyncio.StreamWriter] = set()
        self.accepted = 0
        self.cut_count = 0
        self.is_cut = False

    @property
    def urls(self) -> list[str]:
        return [f"nats://{LOOPBACK}:{p}" for p in self.ports]

    def __enter__(self) -> "TcpProxy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _call(self, coro, timeout: float = 10.0):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def start(self) -> None:
        self._thread.start()
        self._call(self._listen())

    def cut(self) -> None:
        """Drop every connection (RST) and refuse new ones."""
        self._call(self._cut())

    def restore(self) -> None:
        """Accept connections again."""
        self._call(self._listen())

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._shut())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)

    async def _listen(self) -> None:
        if self._servers:
            return
        for port, target in zip(self.ports, self.targets):
            srv = await asyncio.start_server(
                lambda r, w, t=target: self._pipe_pair(r, w, t), LOOPBACK, port, reuse_address=True
            )
            self._servers.append(srv)
        self.is_cut = False

    async def _cut(self) -> None:
        for srv in self._servers:
            srv.close()
        self._servers = []
        for w in list(self._conns):
            w.transport.abort()
        self._conns.clear()
        self.is_cut = True
        self.cut_count += 1

    async def _shut(self) -> None:
        """Cuts, then lets every pipe see its sockets closed and end (for up
        to a second), so that none is left pending when the loop stops."""
        await self._cut()
        pipes = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if pipes:
            await asyncio.wait(pipes, timeout=1.0)

    async def _pipe_pair(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter, target: int) -> None:
        self.accepted += 1
        try:
            sr, sw = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, target), 3)
        except (OSError, asyncio.TimeoutError):
            cw.transport.abort()
            return
        self._conns.update((cw, sw))

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            try:
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                w.transport.abort()

        try:
            await asyncio.gather(pipe(cr, sw), pipe(sr, cw))
        finally:
            self._conns.discard(cw)
            self._conns.discard(sw)
