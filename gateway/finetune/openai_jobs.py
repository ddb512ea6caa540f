"""An OpenAI fine-tune, from a checked training file to a route: upload the file (purpose ``fine-tune``),
create the job, follow its status and events until it ends, and say how a policy routes to the result.

Calls go through the official ``openai`` client (litellm's own dependency, so nothing more to install) to
``openai.api_base`` with the key the gateway's OpenAI route uses (``openai.api_key``, ``api_key_file``, or
``OPENAI_API_KEY``): a fine-tune is made where it will be served. Following is resumable: the job lives at
OpenAI, and ``turnout finetune status JOB`` follows it again from any machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.config.model import OpenAIConfig

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def client_for(config: OpenAIConfig) -> Any:
    """An ``openai.OpenAI`` client for the gateway's OpenAI route (its base URL and key)."""
    import openai

    if config.api_key is not None:
        key = config.api_key.get_secret_value()
    elif config.api_key_file is not None:
        key = Path(config.api_key_file).read_text(encoding="utf-8").strip()
    else:
        key = os.environ.get("OPENAI_API_KEY", "")
    if not key:
        raise ValueError("no OpenAI key: set openai.api_key_file, TURNOUT_OPENAI__API_KEY or OPENAI_API_KEY")
    return openai.OpenAI(base_url=str(config.api_base), api_key=key, timeout=config.timeout_s, max_retries=3)


def start_job(client: Any, data: Path, model: str, suffix: str | None, epochs: int | None) -> Any:
    """Upload ``data`` and create the job; returns the job as OpenAI describes it."""
    with data.open("rb") as fh:
        uploaded = client.files.create(file=(data.name, fh), purpose="fine-tune")
    method: dict[str, Any] = {"type": "supervised", "supervised": {"hyperparameters": {}}}
    if epochs is not None:
        method["supervised"]["hyperparameters"]["n_epochs"] = epochs
    extra = {"suffix": suffix} if suffix else {}
    return client.fine_tuning.jobs.create(training_file=uploaded.id, model=model, method=method, **extra)


@dataclass(frozen=True, slots=True)
class Event:
    created_at: int
    level: str
    message: str


def follow(
    client: Any,
    job_id: str,
    *,
    poll_s: float,
    on_event: Callable[[Event], None],
    on_status: Callable[[Any], None],
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """Poll the job until it ends, telling each new event (oldest first) and each status; returns the job."""
    seen: set[str] = set()
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        events = client.fine_tuning.jobs.list_events(job_id, limit=100).data
        for event in reversed(events):  # OpenAI lists the newest first
            if event.id not in seen:
                seen.add(event.id)
                on_event(Event(event.created_at, event.level, event.message))
        on_status(job)
        if job.status in TERMINAL:
            return job
        sleep(poll_s)


def policy_lines(name: str, fine_tuned_model: str) -> str:
    """The configuration that routes a policy called ``name`` to the fine-tune (to add under ``policies:``)."""
    return f'policies:\n  {name}:\n    description: "OpenAI fine-tune {fine_tuned_model}"\n' + (
        f'    default: "openai:{fine_tuned_model}"\n'
    )


__all__ = ["TERMINAL", "Event", "client_for", "follow", "policy_lines", "start_job"]
