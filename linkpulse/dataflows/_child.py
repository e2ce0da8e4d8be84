"""Helper processes of the flow, and the length-prefixed frames they talk in.

The flow hands the work that would otherwise fight its main thread for the
GIL to child processes (the JetStream reader, the raw-events writer). Each
child is ``python -m <module>``: its stdin carries frames from the flow (the
first one is its arguments), its stdout frames back. A frame is a 4-byte
little-endian length and that many bytes. The child exits when its stdin
closes, which the kernel does when the flow's process dies (even by SIGKILL),
so no child outlives its flow.

>>> frames = FrameBuffer()
>>> frames.feed(frame(b"ab") + frame(b"")[:2])
[b'ab']
>>> frames.feed(frame(b"")[2:] + frame(b"xyz"))
[b'', b'xyz']
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import subprocess
import sys

from linkpulse.errors import DataflowError
from linkpulse.logging import get_logger

__all__ = [
    "HEADER_SIZE",
    "Child",
    "FrameBuffer",
    "child_stdio",
    "frame",
    "read_frame",
    "write_frame",
]

log = get_logger(__name__)

HEADER_SIZE = 4
_PIPE_BYTES = 1 << 20  # a chunk of 1,000 events is ~300 KB; the default pipe holds 64 KB


def frame(body: bytes) -> bytes:
    """``body`` with its length in front."""
    return len(body).to_bytes(HEADER_SIZE, "little") + body


class FrameBuffer:
    """Bytes in, whole frame bodies out (a partial frame waits for the rest)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        pos = 0
        while len(buf) - pos >= HEADER_SIZE:
            end = pos + HEADER_SIZE + int.from_bytes(buf[pos : pos + HEADER_SIZE], "little")
            if len(buf) < end:
                break
            out.append(bytes(buf[pos + HEADER_SIZE : end]))
            pos = end
        del buf[:pos]
        return out


def write_frame(fd: int, body: bytes) -> None:
    """Write ``body`` as one frame to a blocking ``fd``, however long it is."""
    data = memoryview(frame(body))
    while data:
        data = data[os.write(fd, data) :]


def read_frame(fd: int, timeout_s: float | None = None) -> bytes | None:
    """One whole frame from a blocking ``fd``; None at end of file.

    Used by children for their arguments and their input; ``timeout_s``
    bounds the wait for the first byte.
    """
    data = b""
    need = HEADER_SIZE
    first = True
    while len(data) < need:
        if first and timeout_s is not None and not select.select([fd], [], [], timeout_s)[0]:
            msg = f"nothing arrived on fd {fd} within {timeout_s:g} s"
            raise TimeoutError(msg)
        first = False
        part = os.read(fd, need - len(data))
        if not part:
            return None
        data += part
        if need == HEADER_SIZE and len(data) == HEADER_SIZE:
            need += int.from_bytes(data, "little")
    return data[HEADER_SIZE:]


def child_stdio() -> tuple[int, int]:
    """In a child: (fd to read the flow's frames from, fd to write frames to).

    Frames own the real stdout; anything printed goes to stderr instead.
    SIGINT is ignored: a Ctrl-C in the terminal reaches the whole process
    group, and stopping is the flow's to decide (it closes our stdin).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = os.dup(sys.stdout.fileno())
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    return sys.stdin.fileno(), out


class Child:
    """A helper process seen from the flow: send frames, receive frames, stop it."""

    def __init__(self, module: str, args: bytes, *, what: str) -> None:
        self.what = what  # for messages: "the JetStream reader of lp.events.>"
        self._proc = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [sys.executable, "-m", module], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert self._proc.stdin is not None and self._proc.stdout is not None
        self._in = self._proc.stdin.fileno()
        self._out = self._proc.stdout.fileno()
        for fd in (self._in, self._out):
            try:
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
            except OSError:  # above /proc/sys/fs/pipe-max-size: smaller reads, same result
                pass
        os.set_blocking(self._out, False)
        self._frames = FrameBuffer()
        self.eof = False  # the child closed its stdout: it exited or is exiting
        self._closed = False  # close() ran: the fd numbers may belong to other files now
        self.send(args)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def send(self, body: bytes) -> bool:
        """Write one frame (blocks while the pipe is full); False if the child is gone."""
        if self._closed:
            return False
        try:
            write_frame(self._in, body)
        except BrokenPipeError:
            self.eof = True
            return False
        return True

    def receive(self, timeout_s: float = 0.0) -> list[bytes]:
        """Whole frames the child wrote; waits up to ``timeout_s`` for the first byte."""
        if self._closed:
            return []
        if timeout_s > 0 and not self.eof:
            select.select([self._out], [], [], timeout_s)
        out: list[bytes] = []
        while True:
            try:
                data = os.read(self._out, _PIPE_BYTES)
            except BlockingIOError:
                break
            if not data:
                self.eof = True
                break
            out += self._frames.feed(data)
        return out

    def exit_code(self, timeout_s: float = 5.0) -> int | None:
        """Its exit code once it has exited (negative: the signal); None if it has not yet."""
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def exit_error(self) -> DataflowError:
        """The error to raise once the child has gone without being asked to."""
        msg = (
            f"{self.what} exited (code {self.exit_code()}); "
            "restart the flow: it resumes from its last snapshot"
        )
        return DataflowError(msg)

    def close(self, timeout_s: float = 5.0) -> None:
        """Close its stdin (its signal to finish and exit), then wait for it."""
        if self._closed:
            return
        self._closed = self.eof = True
        stdin = self._proc.stdin
        if stdin is not None and not stdin.closed:
            try:
                stdin.close()
            except OSError:  # a dead child's pipe; close() must not raise (Bytewax's destructors)
                pass
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            log.warning("a helper process did not exit; killing it", what=self.what)
            self._proc.kill()
            self._proc.wait()
        stdout = self._proc.stdout
        if stdout is not None and not stdout.closed:
            stdout.close()
