"""Reading the payload on a second thread while the calling thread decrypts.

Decrypting a large file from the page cache is two jobs of similar size: the
kernel copying the file into our buffer (a memory copy of the whole file) and
ChaCha20-Poly1305 over it. Both release the GIL, so a reader thread can fill
the next block while the calling thread decrypts the previous one. The
decryption itself, and every check on it, stays on the calling thread; the
reader thread only calls ``readinto``.

Used only for regular files of at least ``_format.READ_AHEAD_MIN_FILE_SIZE``
bytes (decided in ``_format.decrypt_payload``): a pipe can block a read
forever, and a thread that might outlive the call must never be left reading
the caller's file.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class ReadAhead:
    """Blocks of ``size`` bytes from ``readinto``, filled one block ahead on a thread.

    ``next_block()`` returns a view of the next block: as long as the buffer
    unless the input ended (then shorter, and every later call returns an empty
    view). Like ``io`` buffers, a view is valid only until the next call.
    ``close()`` stops the thread and waits for it; after it returns, nothing
    reads the source any more. Two buffers are in use: the one the caller holds
    and the one being filled.
    """

    def __init__(self, readinto: Callable[[memoryview], int], size: int) -> None:
        self._readinto = readinto
        self._size = size
        self._free: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._full: queue.SimpleQueue[tuple[memoryview, int] | BaseException] = queue.SimpleQueue()
        for _ in range(2):
            self._free.put(memoryview(bytearray(size)))
        self._held: memoryview | None = None
        self._ended = False
        self._stop = False
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._run, name="keycourier-read-ahead")
        self._thread.daemon = True
        self._thread.start()

    def _run(self) -> None:
        try:
            self._fill()
        finally:
            self._finished.set()

    def _fill(self) -> None:
        while True:
            buf = self._free.get()
            if buf is None or self._stop:
                return
            try:
                n = self._readinto(buf)
            except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
                self._full.put(exc)
                return
            self._full.put((buf, n))
            if n < self._size:
                return  # the end of the input

    def next_block(self) -> memoryview:
        if self._held is not None:
            self._free.put(self._held)
            self._held = None
        if self._ended:
            return memoryview(b"")
        item = self._full.get()
        if isinstance(item, BaseException):
            self._ended = True
            raise item
        buf, n = item
        self._held = buf
        if n < self._size:
            self._ended = True
        return buf[:n]

    def close(self) -> None:
        """Stop the thread and wait for it: at most the end of the one read in progress."""
        self._stop = True
        self._free.put(None)  # wakes the thread if it waits for a buffer
        try:
            self._finished.wait()
        except BaseException:
            # Interrupted (Ctrl-C) while waiting: wait on, or the thread could still be
            # reading when the caller closes the file. A second interrupt gets out.
            # (An Event, not Thread.join: Python 3.11's join marks a thread stopped
            # when interrupted, and a second join then returns at once.)
            self._finished.wait()
            raise
        self._thread.join()

    def __enter__(self) -> ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
