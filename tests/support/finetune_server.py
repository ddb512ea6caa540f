"""A local server with OpenAI's files and fine-tuning jobs endpoints, as OpenAI documents them, for the
``turnout finetune start`` / ``status`` flow (nothing here can reach OpenAI).

* ``POST /v1/files`` (multipart ``file`` and ``purpose``), ``GET /v1/files/{id}``;
* ``POST /v1/fine_tuning/jobs``, ``GET /v1/fine_tuning/jobs/{id}``, ``GET .../{id}/events`` (newest first,
  ``after`` and ``limit``), ``POST .../{id}/cancel``;
* errors in OpenAI's envelope (404 for an unknown id, 400 for a file that is not JSONL chat examples).

A job moves one state each time it is read, with an event for each: ``validating_files``, ``queued``,
``running`` (two training steps reported), then ``succeeded`` with ``fine_tuned_model`` ``ft:MODEL:acme:SUFFIX:
ID`` and its ``trained_tokens``; a job whose suffix is ``fail`` ends ``failed`` with an error instead. So a
client that polls sees every state, in order, without anything here depending on time.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import localstack
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ORG = "acme"
_STATES = ["validating_files", "queued", "running", "running", "succeeded"]


def _error(status: int, message: str, param: str | None = None, code: str | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}, status
    )


@dataclass
class _Job:
    id: str
    model: str
    training_file: str
    suffix: str | None
    epochs: int
    tokens: int
    created_at: int
    step: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    cancelled: bool = False

    @property
    def failing(self) -> bool:
        return self.suffix == "fail"

    @property
    def status(self) -> str:
        if self.cancelled:
            return "cancelled"
        state = _STATES[min(self.step, len(_STATES) - 1)]
        return "failed" if state == "succeeded" and self.failing else state

    def describe(self) -> dict[str, Any]:
        status = self.status
        done = status in ("succeeded", "failed", "cancelled")
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": self.created_at,
            "finished_at": self.created_at + 60 if done else None,
            "model": self.model,
            "fine_tuned_model": f"ft:{self.model}:{ORG}:{self.suffix or ''}:{self.id[-8:]}"
            if status == "succeeded"
            else None,
            "organization_id": f"org-{ORG}",
            "result_files": [],
            "status": status,
            "validation_file": None,
            "training_file": self.training_file,
            "hyperparameters": {"n_epochs": self.epochs, "batch_size": 1, "learning_rate_multiplier": 1.8},
            "trained_tokens": self.tokens * self.epochs if status == "succeeded" else None,
            "error": {"code": "invalid_training_file", "message": "The job failed: training diverged.", "param": None}
            if status == "failed"
            else None,
            "seed": 42,
            "estimated_finish": None,
            "integrations": [],
            "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": self.epochs}}},
        }


class FineTuneServer:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.contents: dict[str, bytes] = {}
        self.jobs: dict[str, _Job] = {}
        self.keys_seen: list[str] = []
        self._ids = itertools.count(1)
        self.port = localstack.free_port()
        app = Starlette(
            routes=[
                Route("/v1/files", self.upload, methods=["POST"]),
                Route("/v1/files/{id}", self.file, methods=["GET"]),
                Route("/v1/fine_tuning/jobs", self.create_job, methods=["POST"]),
                Route("/v1/fine_tuning/jobs/{id}", self.job, methods=["GET"]),
                Route("/v1/fine_tuning/jobs/{id}/events", self.job_events, methods=["GET"]),
                Route("/v1/fine_tuning/jobs/{id}/cancel", self.cancel, methods=["POST"]),
            ]
        )
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def _id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):024d}"

    async def upload(self, request: Request) -> JSONResponse:
        self.keys_seen.append(request.headers.get("authorization", ""))
        form = await request.form()
        upload, purpose = form.get("file"), form.get("purpose")
        if purpose != "fine-tune":
            return _error(400, f"Invalid purpose {purpose!r}", "purpose")
        if upload is None or isinstance(upload, str):
            return _error(400, "No file was uploaded", "file")
        content = await upload.read()
        for number, line in enumerate(content.splitlines(), start=1):
            try:
                if "messages" not in json.loads(line):
                    raise ValueError
            except ValueError:
                return _error(400, f"Invalid file format: line {number} is not a chat example", "file")
        file_id = self._id("file")
        self.contents[file_id] = content
        self.files[file_id] = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": upload.filename,
            "purpose": "fine-tune",
            "status": "processed",
        }
        return JSONResponse(self.files[file_id])

    async def file(self, request: Request) -> JSONResponse:
        found = self.files.get(request.path_params["id"])
        return JSONResponse(found) if found else _error(404, "No such File object", "id")

    async def create_job(self, request: Request) -> JSONResponse:
        body = await request.json()
        training = body.get("training_file")
        if training not in self.files:
            return _error(400, f"invalid training_file: {training}", "training_file")
        method = body.get("method") or {}
        epochs = (method.get("supervised") or {}).get("hyperparameters", {}).get("n_epochs") or (
            body.get("hyperparameters") or {}
        ).get("n_epochs", "auto")
        job = _Job(
            id=self._id("ftjob"),
            model=body["model"],
            training_file=training,
            suffix=body.get("suffix"),
            epochs=3 if epochs == "auto" else int(epochs),
            tokens=len(self.contents[training]) // 4,
            created_at=int(time.time()),
        )
        job.events.append(self._event(job, "info", f"Created fine-tuning job: {job.id}"))
        self.jobs[job.id] = job
        return JSONResponse(job.describe())

    def _event(self, job: _Job, level: str, message: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            "id": f"ftevent-{next(self._ids):024d}",
            "object": "fine_tuning.job.event",
            "created_at": int(time.time()),
            "level": level,
            "message": message,
            "data": data or {},
            "type": "metrics" if data else "message",
        }

    async def job(self, request: Request) -> JSONResponse:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return _error(404, f"Could not find fine-tune: {request.path_params['id']}", "fine_tune_id")
        if job.status not in ("succeeded", "failed", "cancelled"):
            job.step += 1
            status = job.status
            if status == "queued":
                job.events.append(self._event(job, "info", "Validating training file: done"))
            elif status == "running":
                step = sum(e["type"] == "metrics" for e in job.events) + 1
                loss = f"Step {step}/2: training loss=1.{9 - step}"
                job.events.append(self._event(job, "info", loss, {"step": step}))
            elif status == "succeeded":
                job.events.append(self._event(job, "info", "The job has successfully completed"))
            elif status == "failed":
                job.events.append(self._event(job, "error", "The job failed: training diverged."))
        return JSONResponse(job.describe())

    async def job_events(self, request: Request) -> JSONResponse:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return _error(404, f"Could not find fine-tune: {request.path_params['id']}", "fine_tune_id")
        newest_first = list(reversed(job.events))
        after = request.query_params.get("after")
        if after:  # a cursor: the events older than that one
            ids = [e["id"] for e in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :] if after in ids else []
        limit = int(request.query_params.get("limit", "20"))
        return JSONResponse({"object": "list", "data": newest_first[:limit], "has_more": len(newest_first) > limit})

    async def cancel(self, request: Request) -> JSONResponse:
        job = self.jobs.get(request.path_params["id"])
        if job is None:
            return _error(404, f"Could not find fine-tune: {request.path_params['id']}", "fine_tune_id")
        job.cancelled = True
        return JSONResponse(job.describe())

    @contextmanager
    def running(self) -> Iterator[FineTuneServer]:
        thread = threading.Thread(target=self._server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            assert time.monotonic() < deadline, "the fine-tuning server did not start"
            time.sleep(0.01)
        try:
            yield self
        finally:
            self._server.should_exit = True
            thread.join(timeout=10)


__all__ = ["FineTuneServer"]
