"""A real HTTP proxy on 127.0.0.1 that injects faults between ``ServerTeacher`` and the teacher server.

Each ``POST /v1/completions`` takes the next fault of ``script`` (then ``then`` forever); other routes pass
through. Faults:

- ``ok``: forward unchanged;            ``500``: answer HTTP 500 without forwarding;
- ``delay``: sleep ``delay_s``, then forward (a client with a shorter timeout gives up first);
- ``malformed_json``: a 200 whose body is cut-off JSON;
- ``truncate``: drop the last two ``prompt_logprobs`` entries of every choice;
- ``extra``: append one ``prompt_logprobs`` entry (wrong length);
- ``shift``: shift ``prompt_logprobs`` right by one (right length, wrong tokens);
- ``nan``: the last scored log-prob becomes ``null`` (what vLLM's JSON makes of NaN);
- ``drop_choice``: remove the last choice.

``hide_opdkit`` strips the ``opdkit`` metadata from ``/v1/models``, so the server looks like a stock vLLM.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def _mutate(body: dict[str, Any], fault: str) -> None:
    for choice in body["choices"]:
        entries = choice["prompt_logprobs"]
        if fault == "truncate":
            del entries[-2:]
        elif fault == "extra":
            entries.append(entries[-1])
        elif fault == "shift":
            choice["prompt_logprobs"] = [None, *entries[:-1]]
        elif fault == "nan":
            next(iter(entries[-1].values()))["logprob"] = None
    if fault == "drop_choice":
        body["choices"].pop()


class FaultProxy:
    def __init__(self, upstream: str, *, delay_s: float = 1.5) -> None:
        self.upstream = upstream
        self.delay_s = delay_s
        self.script: list[str] = []
        self.then = "ok"
        self.hide_opdkit = False
        self.completions_seen = 0
        self._lock = threading.Lock()
        app = Starlette(routes=[Route("/{path:path}", self._handle, methods=["GET", "POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    def set_faults(self, script: list[str], then: str = "ok") -> None:
        with self._lock:
            self.script, self.then, self.completions_seen = list(script), then, 0

    def _next_fault(self) -> str:
        with self._lock:
            self.completions_seen += 1
            return self.script.pop(0) if self.script else self.then

    async def _handle(self, request: Request) -> Response:
        path = request.url.path
        fault = self._next_fault() if path == "/v1/completions" else "ok"
        if fault == "delay":
            await asyncio.sleep(self.delay_s)
        if fault == "500":
            return Response("upstream exploded", status_code=500)
        if fault == "malformed_json":
            return Response(b'{"choices": [{"index": 0, "prompt_logp', media_type="application/json")
        headers = {k: v for k, v in request.headers.items() if k.lower() in ("authorization", "content-type")}
        async with httpx.AsyncClient(base_url=self.upstream, timeout=30) as client:
            up = await client.request(request.method, path, content=await request.body(), headers=headers)
        if up.status_code != 200 or (
            fault in ("ok", "delay") and not (self.hide_opdkit and path == "/v1/models")
        ):
            return Response(up.content, status_code=up.status_code, media_type="application/json")
        body = up.json()
        if path == "/v1/models":
            for card in body["data"]:
                card.pop("opdkit", None)
        else:
            _mutate(body, fault)
        return Response(json.dumps(body), media_type="application/json")

    @property
    def url(self) -> str:
        port = self._server.servers[0].sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def start(self) -> FaultProxy:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fault proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
