"""Run the real API under a real uvicorn server, in a background thread, for tests."""

from __future__ import annotations

import threading
import time
from types import TracebackType

import uvicorn

from linkpulse.api import create_app
from linkpulse.config import Settings


class ApiServer:
    """``with ApiServer(settings, port) as base_url:`` serves the app until the block ends."""

    def __init__(self, settings: Settings, port: int) -> None:
        config = uvicorn.Config(
            create_app(settings),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.base_url = f"http://127.0.0.1:{port}"
        self._thread = threading.Thread(target=self.server.run, name="api-server", daemon=True)

    def __enter__(self) -> str:
        self._thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                msg = f"the API server did not start on {self.base_url}"
                raise RuntimeError(msg)
            time.sleep(0.02)
        return self.base_url

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=15)
