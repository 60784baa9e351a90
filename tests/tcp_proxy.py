"""A TCP proxy in front of PostgreSQL that a test can cut or turn into a black hole, to play an outage."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

Mode = Literal["pass", "cut", "hole"]


class TcpProxy:
    """Listens on 127.0.0.1 (``port``) and forwards to ``target``.

    ``cut()``: every connection is closed and new ones are closed at once (the server is down).
    ``black_hole()``: connections stay open but nothing passes either way, new ones included (a network
    that drops everything, as far as the client can tell). ``restore()``: connections held in the hole
    are closed and new ones pass again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.mode: Mode = "pass"
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, daemon=True, name="tcp-proxy").start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.mode == "cut":
                client.close()
                continue
            upstream: socket.socket | None = None
            if self.mode == "pass":
                try:
                    upstream = socket.create_connection(self.target, timeout=5)
                    upstream.settimeout(None)
                except OSError:
                    client.close()
                    continue
            with self._lock:
                self._open.extend(sock for sock in (client, upstream) if sock is not None)
            threading.Thread(target=self._pump, args=(client, upstream), daemon=True).start()
            if upstream is not None:
                threading.Thread(target=self._pump, args=(upstream, client), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket | None) -> None:
        try:
            while data := source.recv(65536):
                if self.mode == "pass" and sink is not None:
                    sink.sendall(data)
                # otherwise dropped: the peer waits for an answer that never comes
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)

    def _close_all(self) -> None:
        with self._lock:
            sockets, self._open = self._open, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def cut(self) -> None:
        self.mode = "cut"
        self._close_all()

    def black_hole(self) -> None:
        self.mode = "hole"

    def restore(self) -> None:
        held = self.mode == "hole"
        self.mode = "pass"
        if held:
            self._close_all()

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self._close_all()
