"""Erase a person's messages from the JetStream streams: raw events and dead letters.

The stream keeps every event until ``LINKPULSE_STREAM_MAX_AGE_S``, and a
dataflow resumed from an old snapshot would store an erased event again, so
erase reads the stream (the tenant's subjects only, with ``--tenant``) and
deletes the person's messages by sequence. Reading costs a pass over those
subjects (an ordered consumer, tens of thousands of messages a second); on a
stream too big for that, ``--skip-streams`` leaves them to age out (said in
the report and the audit log).

A message is the person's when its JSON has their ``user_id`` (and tenant);
a dead letter when its payload mentions them (``Person.mentioned_in``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError, ServerError

from linkpulse.bus.connection import connect_nats
from linkpulse.bus.stream import dead_letter_stream_name
from linkpulse.bus.subjects import dead_letters_filter, events_filter
from linkpulse.config import Settings
from linkpulse.errors import IngestError
from linkpulse.privacy.person import Person
from linkpulse.schemas.outputs import DeadLetter

__all__ = ["StreamErasure", "erase_streams"]

Progress = Callable[[str, int, int], None]  # (stream, messages read, messages to read)
_READ_TIMEOUT_S = 10.0
_letter = msgspec.json.Decoder(DeadLetter)


@dataclass
class StreamErasure:
    """Per stream: messages read and the person's messages deleted (or found, dry run)."""

    read: dict[str, int]
    deleted: dict[str, int]


def _event_match(who: Person) -> Callable[[bytes], bool]:
    quoted = [q.encode() for q in who.quoted()]

    def match(data: bytes) -> bool:
        return any(q in data for q in quoted) and who.mentioned_in(data.decode("utf-8", "replace"))

    return match


def _letter_match(who: Person) -> Callable[[bytes], bool]:
    quoted = who.quoted()

    def match(data: bytes) -> bool:
        try:
            payload = _letter.decode(data).payload
        except (msgspec.DecodeError, msgspec.ValidationError):
            return False
        return any(q in payload for q in quoted) and who.mentioned_in(payload)

    return match


async def _scan(
    js: JetStreamContext,
    stream: str,
    subject: str,
    match: Callable[[bytes], bool],
    progress: Progress,
) -> tuple[int, list[int]]:
    """(messages read, sequences matching) of ``subject`` in ``stream``."""
    try:
        info = await js.stream_info(stream, subjects_filter=subject)
    except NotFoundError:
        return 0, []
    total = sum((info.state.subjects or {}).values())
    if total == 0:
        return 0, []
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    read, found = 0, []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=_READ_TIMEOUT_S)
            except TimeoutError as e:
                text = f"reading {stream} stalled after {read} of {total} messages"
                raise IngestError(text) from e
            read += 1
            if match(msg.data):
                found.append(msg.metadata.sequence.stream)
            if read % 1000 == 0:
                progress(stream, read, total)
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    progress(stream, read, max(total, read))
    return read, found


async def erase_streams(
    settings: Settings, who: Person, *, dry_run: bool = False, progress: Progress | None = None
) -> StreamErasure:
    """Delete ``who``'s messages from the events and dead-letter streams."""
    report = StreamErasure(read={}, deleted={})
    events_subject = events_filter(settings.subject_prefix)
    if who.tenant is not None:
        events_subject = events_subject[: -len(">")] + f"{who.tenant}.>"
    targets = [
        (settings.stream_name, events_subject, _event_match(who)),
        (
            dead_letter_stream_name(settings),
            dead_letters_filter(settings.subject_prefix),
            _letter_match(who),
        ),
    ]
    nc = await connect_nats(settings, name="linkpulse-privacy")
    try:
        js = nc.jetstream()
        for stream, subject, match in targets:
            read, found = await _scan(js, stream, subject, match, progress or (lambda *_: None))
            report.read[stream] = read
            report.deleted[stream] = len(found)
            if dry_run:
                continue
            for seq in found:
                try:
                    await js.delete_msg(stream, seq)
                except ServerError as e:  # gone meanwhile (max age): nothing left to delete
                    if e.err_code != 10057:
                        raise
    finally:
        await nc.close()
    return report
