"""A real uvicorn server on a free loopback port, shared by the server and playground tests."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn

PIRATE = (
    "You are a pirate captain. You always talk like a pirate, say 'Arr!' and 'matey', and bring every answer "
    "back to your ship, the sea and buried treasure."
)


class RunningServer:
    """uvicorn serving `app` on a free loopback port in a background thread."""

    def __init__(self, app):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.02)

    def stop(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)
