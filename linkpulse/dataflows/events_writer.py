"""The raw-events writer process: the flow's events into the store, off its GIL.

``PipelinedEventsSink`` starts one per sink partition (``python -m
linkpulse.dataflows.events_writer``). The flow sends each batch of events as
one frame of canonical JSON lines (``encode_event``, joined by newlines); the
writer coalesces what has arrived (up to ``coalesce_rows``), stores it with
``EventWriter.write_event_json`` (idempotent, retrying through a store
outage) and answers with an ``Ack`` per write.

Why a process: waiting on PostgreSQL, a writer *thread* gets the GIL back
only after the flow's busy main thread lets go of it. Measured here, a busy
Python thread in the same process halved the writer (82k -> 39k events/s),
a busy separate process cost it ~15%.

>>> Ack(batches=2, rows=10, seconds=0.01).error is None
True
"""

from __future__ import annotations

import queue
import sys
import threading
import time

import msgspec

from linkpulse.dataflows._child import child_stdio, read_frame, write_frame
from linkpulse.logging import configure_logging, get_logger
from linkpulse.query.watermarks import WatermarkTarget

__all__ = ["ACK_DECODER", "ACK_ENCODER", "Ack", "WriterArgs"]

log = get_logger(__name__)


class WriterArgs(msgspec.Struct, frozen=True):
    """What the flow tells its writer, as the first frame on the writer's stdin."""

    dsn: str
    max_retries: int
    coalesce_rows: int = 20_000
    log_level: str = "INFO"
    log_json: bool = False
    watermarks: WatermarkTarget | None = None  # touched after each write (the query cache)


class Ack(msgspec.Struct, array_like=True):
    """Writer -> flow: ``batches`` more frames are stored (``rows`` events, in ``seconds``).

    ``error``: the write failed for good (after the writer's retries); the
    writer stops, and the flow raises it.
    """

    batches: int
    rows: int
    seconds: float
    error: str | None = None


ACK_ENCODER = msgspec.msgpack.Encoder()
ACK_DECODER = msgspec.msgpack.Decoder(Ack)
ARGS_DECODER = msgspec.json.Decoder(WriterArgs)


def _read_input(fd: int, inbox: queue.Queue[bytes | None]) -> None:
    """Frames from the flow into ``inbox``; None at the end (stdin closed)."""
    try:
        while (body := read_frame(fd)) is not None:
            inbox.put(body)
    finally:
        inbox.put(None)


def _take(inbox: queue.Queue[bytes | None], coalesce_rows: int) -> tuple[list[bytes], int, bool]:
    """Block for one batch, then add what else has arrived (up to ``coalesce_rows``).

    Returns (JSON lines, frames taken, input ended).
    """
    first = inbox.get()
    if first is None:
        return [], 0, True
    lines, taken = first.split(b"\n"), 1
    while len(lines) < coalesce_rows:
        try:
            more = inbox.get_nowait()
        except queue.Empty:
            break
        if more is None:
            return lines, taken, True
        lines += more.split(b"\n")
        taken += 1
    return lines, taken, False


def main() -> None:
    """Entry point of ``python -m linkpulse.dataflows.events_writer``."""
    in_fd, out_fd = child_stdio()  # first: it ignores SIGINT, and importing takes a while
    from linkpulse.store.writer import EventWriter  # psycopg: only in this process's path

    body = read_frame(in_fd, timeout_s=30)
    if body is None:
        return
    args = ARGS_DECODER.decode(body)
    configure_logging(args.log_level, args.log_json)
    inbox: queue.Queue[bytes | None] = queue.Queue()
    threading.Thread(target=_read_input, args=(in_fd, inbox), daemon=True).start()
    bumper = args.watermarks.bumper() if args.watermarks is not None else None
    writer = EventWriter(args.dsn, max_retries=args.max_retries, watermarks=bumper)
    flow_alive = True
    try:
        done = False
        while not done:
            lines, taken, done = _take(inbox, args.coalesce_rows)
            if not taken:
                break
            started = time.perf_counter()
            try:
                writer.write_event_json(lines)
            except Exception as e:  # noqa: BLE001 - the flow raises it, with its message
                ack = Ack(taken, len(lines), time.perf_counter() - started, f"{e}")
                _acknowledge(out_fd, ack)
                sys.exit(1)
            ack = Ack(taken, len(lines), time.perf_counter() - started)
            flow_alive = flow_alive and _acknowledge(out_fd, ack)
    finally:
        writer.close()


def _acknowledge(out_fd: int, ack: Ack) -> bool:
    """Send ``ack``; False if the flow is gone (killed: its end of our stdout closed).

    The writer then goes on storing what it has already read, unacknowledged
    (the restarted flow replays it; writes are idempotent), and exits when
    its stdin ends, as it does when the flow stops it.
    """
    try:
        write_frame(out_fd, ACK_ENCODER.encode(ack))
    except BrokenPipeError:
        return False
    return True


if __name__ == "__main__":
    main()
