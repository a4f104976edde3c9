"""A TCP relay between an app and its inference server that can hold a streamed reply mid-way.

Killing a server "mid-reply" races the server itself: a short reply can be complete before the kill
lands, most often when the machine is busy and the app reads slowly. The relay takes that race
away: once `hold_after(n)` is armed, a response stream is forwarded up to its n-th server-sent
`data:` event and nothing after it, so when the server then dies, the app has seen part of a reply
and never its end. `cut_next()` ends a connection after a reply's headers, as a server that closes
a kept-alive connection with the next request already on it. Everything else is passed through byte for byte; a connection to a server that
is down is reset, which an HTTP client sees as the server not being reachable.
"""

from __future__ import annotations

import socket
import struct
import threading

EVENT = b"data:"


class StreamCut:
    """Listens on a free loopback port and relays every connection to `upstream_port`."""

    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._hold: tuple[int, int] | None = None  # (arming number, events), read by every stream
        self._armed = 0
        self._cuts = 0  # response streams still to cut before their first event
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def hold_after(self, events: int) -> None:
        """From now on, a response stream stops being forwarded after `events` `data:` events
        (counted from now, also on kept-alive connections that carried earlier replies)."""
        self._armed += 1
        self._hold = (self._armed, events)

    def release(self) -> None:
        self._hold = None

    def cut_next(self, replies: int = 1) -> None:
        """The next `replies` response streams are forwarded up to their first `data:` event, and
        their connections then closed: a server closing a kept-alive connection with a request on it."""
        self._cuts = replies

    def close(self) -> None:
        self._listener.close()
        with self._lock:
            for sock in self._open:
                _reset(sock)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                _reset(client)  # the server is down: the client sees its connection reset
                client.close()
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        upward = threading.Thread(target=self._pump, args=(client, server, False), daemon=True)
        upward.start()
        self._pump(server, client, True)
        upward.join()
        with self._lock:
            self._open.difference_update((client, server))
        client.close()
        server.close()

    def _pump(self, source: socket.socket, sink: socket.socket, downstream: bool) -> None:
        """Copy one direction until its end, and pass the end on as it came: an orderly close as an
        orderly close (a killed server's kernel closes its sockets so), a reset as a reset."""
        armed, events, tail, cut_tail = 0, 0, b"", b""
        holding = False
        try:
            while data := source.recv(65536):
                if holding:
                    continue  # read and dropped: the app sees a reply that has stopped coming
                if downstream and self._cuts:
                    data, began, _, cut_tail = _up_to_event(data, 0, 0, cut_tail)
                    if began:
                        self._cuts -= 1
                        sink.sendall(data)
                        break  # the headers went, no text: the connection ends here
                hold = self._hold if downstream else None
                if hold is not None:
                    if hold[0] != armed:  # armed since this connection's last reply: count afresh
                        armed, events, tail = hold[0], 0, b""
                    data, holding, events, tail = _up_to_event(data, hold[1], events, tail)
                sink.sendall(data)
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            _reset(sink)
            _reset(source)


def _up_to_event(data: bytes, limit: int, seen: int, tail: bytes) -> tuple[bytes, bool, int, bytes]:
    """(the part of `data` before event number limit+1, whether that event began, events seen, the
    last bytes for a marker split across reads)."""
    joined = tail + data
    start = 0
    while (found := joined.find(EVENT, start)) != -1:
        seen += 1
        if seen > limit:
            return joined[len(tail) : found] if found >= len(tail) else b"", True, seen, b""
        start = found + len(EVENT)
    return data, False, seen, joined[-(len(EVENT) - 1) :]


def _reset(sock: socket.socket) -> None:
    """Make the socket's close a TCP reset (linger 0), and wake the thread blocked in its recv: until
    that returns, a close would not release the socket, and nothing would reach the peer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
