"""Ctrl-C that stops a job even where a library swallowed its `KeyboardInterrupt`.

Python turns SIGINT into `KeyboardInterrupt` in the main thread, between two bytecodes of whatever
runs there. When that is library code that catches and drops it (a finaliser run by the garbage
collector, or Ray's `DeferSigint`, which holds a SIGINT back while it submits a task and drops it
when the submission raises), the signal is lost and the job runs on to the end: in the suite,
`raeflow embed` sent SIGINT exited 0, twice in three runs of 800 tests.

`SigintWatch` keeps its own record of every SIGINT, below the handlers: the interpreter writes the
number of each signal it receives to the descriptor given to `signal.set_wakeup_fd`, whichever
Python handler is in place, and a thread reads it. The batch loop calls `check()` between batches
and once more before it commits the job's end, and raises `KeyboardInterrupt` there when a SIGINT
came and was not seen as one.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
from types import TracebackType


class SigintWatch:
    """Records SIGINTs received inside the `with` block (main thread only; elsewhere it does nothing)."""

    def __init__(self) -> None:
        self._seen = threading.Event()
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._previous = -1

    def __enter__(self) -> SigintWatch:
        if threading.current_thread() is not threading.main_thread():
            return self
        reader, writer = socket.socketpair()
        writer.setblocking(False)  # the interpreter writes from its signal handler: never block
        try:
            self._previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:  # not the main thread of the main interpreter after all
            reader.close()
            writer.close()
            return self
        self._sockets = (reader, writer)
        threading.Thread(target=self._read, args=(reader,), name="raeflow-sigint", daemon=True).start()
        return self

    def _read(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                self._seen.set()

    @property
    def received(self) -> bool:
        """Whether a SIGINT came since the block started."""
        return self._seen.is_set()

    def check(self) -> None:
        """Raise `KeyboardInterrupt` when a SIGINT came that nothing turned into one."""
        if self._seen.is_set():
            raise KeyboardInterrupt

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._sockets is None:
            return
        with contextlib.suppress(ValueError):
            current = signal.set_wakeup_fd(self._previous)
            if current != self._sockets[1].fileno():  # someone else's since: leave theirs in place
                signal.set_wakeup_fd(current)
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # the reading thread's recv returns and it ends
            sock.close()
        self._sockets = None
