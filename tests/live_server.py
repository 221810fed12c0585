"""A uvicorn server for an app on a free port of 127.0.0.1, in a thread (test helper)."""

from __future__ import annotations

import http.client
import json
import threading
import time

import openai
import uvicorn


class Running:
    """A uvicorn server for ``app`` on a free port, in a thread."""

    def __init__(self, app) -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 20
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def http(self, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None) -> http.client.HTTPResponse:
        """A raw request (the response is open: read it, then close it)."""
        connection = http.client.HTTPConnection(self.url[7:], timeout=30)
        connection.request(method, path, body=body, headers=headers or {})
        return connection.getresponse()

    def get_json(self, path: str) -> dict:
        response = self.http("GET", path)
        try:
            return json.loads(response.read())
        finally:
            response.close()

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0,
                             timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
