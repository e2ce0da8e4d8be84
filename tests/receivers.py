"""Real receivers on loopback for the notifier tests: an HTTP server and an SMTP server.

``HttpReceivers`` serves ``/webhook``, ``/slack``, ``/pd`` (PagerDuty Events
v2: every body is checked against the API's required fields, and a bad one
answers 400 as PagerDuty does, and is kept in ``pd_problems``) and
``/garbage`` (answers a non-HTTP line and hangs up). ``fail(path, n, status)``
makes the next ``n`` requests fail; ``delay`` slows a path; ``stop()`` and
``start()`` take the server down and bring it back on the same port.
``SmtpReceiver`` is aiosmtpd on a free port keeping every mail.
"""

from __future__ import annotations

import email
import email.policy
import json
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

PD_ACTIONS = {"trigger", "acknowledge", "resolve"}
PD_SEVERITIES = {"critical", "error", "warning", "info"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pd_problems(body: Any) -> list[str]:
    """What is wrong with an Events v2 body (empty: valid)."""
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    out = []
    if not isinstance(body.get("routing_key"), str) or not body["routing_key"]:
        out.append("routing_key is required")
    action = body.get("event_action")
    if action not in PD_ACTIONS:
        out.append(f"event_action must be one of {sorted(PD_ACTIONS)}, got {action!r}")
    key = body.get("dedup_key")
    if action in ("acknowledge", "resolve") and not key:
        out.append("dedup_key is required to acknowledge or resolve")
    if key is not None and (not isinstance(key, str) or len(key) > 255):
        out.append("dedup_key must be a string of at most 255 characters")
    if action == "trigger":
        p = body.get("payload")
        if not isinstance(p, dict):
            out.append("payload is required for a trigger")
        else:
            for f in ("summary", "source", "severity"):
                if not isinstance(p.get(f), str) or not p[f]:
                    out.append(f"payload.{f} is required")
            if len(p.get("summary", "")) > 1024:
                out.append("payload.summary is longer than 1024 characters")
            if p.get("severity") not in PD_SEVERITIES:
                out.append(f"payload.severity must be one of {sorted(PD_SEVERITIES)}")
    return out


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # arrival (wall clock: benchmarks compare)

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class _State:
    requests: list[Request] = field(default_factory=list)
    failures: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    delays: dict[str, float] = field(default_factory=dict)
    pd_problems: list[tuple[dict[str, Any], list[str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: _State) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def handle(self) -> None:
            # a sender that timed out or was killed hangs up mid-answer: expected here
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            path = self.path
            with state.lock:  # recorded on arrival: a test can kill the sender mid-request
                state.requests.append(Request(path, dict(self.headers.items()), body))
                failing = state.failures[path].pop(0) if state.failures[path] else None
            delay = state.delays.get(path, 0.0)
            if delay:
                time.sleep(delay)
            if path == "/garbage":
                self.wfile.write(b"this is not HTTP at all\r\n\r\n")
                self.close_connection = True
                return
            if failing is not None:
                return self._answer(failing, {"error": "scripted failure"})
            if path == "/pd":
                try:
                    parsed = json.loads(body)
                except ValueError:
                    parsed = None
                problems = pd_problems(parsed)
                if problems:
                    with state.lock:
                        state.pd_problems.append((parsed, problems))
                    return self._answer(400, {"status": "invalid event", "errors": problems})
                return self._answer(
                    202,
                    {
                        "status": "success",
                        "message": "Event processed",
                        "dedup_key": parsed["dedup_key"],
                    },
                )
            if path == "/slack":
                return self._answer(200, None, b"ok")
            self._answer(200, {"ok": True})

        def _answer(self, status: int, doc: Any, raw: bytes | None = None) -> None:
            data = raw if raw is not None else json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


class HttpReceivers:
    """The recording HTTP server (see the module doc)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.state = _State()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), _handler(self.state))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def fail(self, path: str, times: int, status: int = 500) -> None:
        with self.state.lock:
            self.state.failures[path].extend([status] * times)

    def delay(self, path: str, seconds: float) -> None:
        self.state.delays[path] = seconds

    def requests(self, path: str) -> list[Request]:
        with self.state.lock:
            return [r for r in self.state.requests if r.path == path]

    def pd_events(self) -> list[dict[str, Any]]:
        """Every valid PagerDuty event received (retries included)."""
        return [r.json for r in self.requests("/pd") if not pd_problems(_json(r.body))]

    def pd_incidents(self) -> dict[str, list[str]]:
        """dedup_key -> the distinct actions PagerDuty saw, in order (its view of each incident)."""
        out: dict[str, list[str]] = {}
        for e in self.pd_events():
            seen = out.setdefault(e["dedup_key"], [])
            if not seen or seen[-1] != e["event_action"]:
                seen.append(e["event_action"])
        return out

    def by_idempotency_key(self, path: str) -> dict[str, list[Request]]:
        out: dict[str, list[Request]] = {}
        for r in self.requests(path):
            out.setdefault(r.headers.get("Idempotency-Key", ""), []).append(r)
        return out


def _json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class _MailHandler:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """aiosmtpd on loopback; ``messages`` are the mails received."""

    def __init__(self) -> None:
        self.port = free_port()
        self._handler = _MailHandler()
        self._controller = Controller(self._handler, hostname="127.0.0.1", port=self.port)

    @property
    def messages(self) -> list[EmailMessage]:
        return self._handler.messages

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()
