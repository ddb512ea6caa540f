"""``turnout finetune start`` and ``status`` driving the official ``openai`` client against a local server with
OpenAI's files and fine-tuning job endpoints (tests/support/finetune_server.py): the upload, every job state
from validating_files to succeeded or failed, the events, the key the gateway's OpenAI route uses, and the
printed policy, which the gateway's own configuration check accepts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import load_config
from gateway.finetune.openai_jobs import Event, client_for, follow
from tests.support.finetune_server import FineTuneServer

SAMPLE = Path(__file__).resolve().parents[2] / "examples" / "finetune" / "support-formal.jsonl"
runner = CliRunner()


@pytest.fixture(scope="module")
def server() -> Iterator[FineTuneServer]:
    with FineTuneServer().running() as running:
        yield running


@pytest.fixture
def config(server: FineTuneServer, tmp_path: Path) -> Path:
    (tmp_path / "openai.key").write_text("sk-test-finetune\n")
    path = tmp_path / "turnout.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "vllm": {"url": "http://127.0.0.1:1", "model": "tiny"},
                "openai": {"api_base": server.url, "api_key_file": str(tmp_path / "openai.key")},
            }
        )
    )
    return path


def test_a_fine_tune_is_uploaded_followed_to_success_and_routed(server: FineTuneServer, config: Path) -> None:
    result = runner.invoke(
        app,
        [
            "finetune",
            "start",
            str(SAMPLE),
            "-c",
            str(config),
            "--suffix",
            "support",
            "--epochs",
            "2",
            "--poll-s",
            "0.01",
        ],
    )
    assert result.exit_code == 0, result.output
    [job] = server.jobs.values()
    assert server.contents[job.training_file] == SAMPLE.read_bytes()  # the file itself, uploaded whole
    assert server.files[job.training_file]["purpose"] == "fine-tune"
    assert (job.model, job.suffix, job.epochs) == ("gpt-4o-mini-2024-07-18", "support", 2)
    assert server.keys_seen[-1] == "Bearer sk-test-finetune"  # the OpenAI route's key file
    output = result.output
    events = ["Created fine-tuning job", "Validating training file", "Step 1/2", "Step 2/2", "successfully completed"]
    positions = [output.index(event) for event in events]
    assert positions == sorted(positions), output  # each event once, oldest first
    assert all(output.count(event) == 1 for event in events)
    fine_tuned = f"ft:gpt-4o-mini-2024-07-18:acme:support:{job.id[-8:]}"
    assert f"fine-tuned model: {fine_tuned}" in output
    snippet = output[output.index("policies:") :]
    with_policy = yaml.safe_load(config.read_text()) | yaml.safe_load(snippet)
    config.write_text(yaml.safe_dump(with_policy))
    settings = load_config(config)  # the printed lines are a valid configuration: a policy routes to the fine-tune
    assert settings.policies["support"].default.openai == fine_tuned


def test_a_failed_fine_tune_exits_1_with_openais_reason(server: FineTuneServer, config: Path) -> None:
    result = runner.invoke(
        app, ["finetune", "start", str(SAMPLE), "-c", str(config), "--suffix", "fail", "--poll-s", "0.01"]
    )
    assert result.exit_code == 1
    assert "failed: The job failed: training diverged." in result.output


def test_status_resumes_a_job_and_reports_unknown_ones(server: FineTuneServer, config: Path) -> None:
    started = runner.invoke(app, ["finetune", "start", str(SAMPLE), "-c", str(config), "--no-follow"])
    assert started.exit_code == 0, started.output
    job_id = started.output.split()[1]
    assert server.jobs[job_id].status == "validating_files"
    peek = runner.invoke(app, ["finetune", "status", job_id, "-c", str(config), "--no-follow"])
    assert peek.exit_code == 0
    assert f"{job_id}: queued" in peek.output
    resumed = runner.invoke(app, ["finetune", "status", job_id, "-c", str(config), "--poll-s", "0.01", "--policy", "p"])
    assert resumed.exit_code == 0, resumed.output
    assert f"{job_id}: succeeded" in resumed.output
    assert "  p:\n" in resumed.output
    unknown = runner.invoke(app, ["finetune", "status", "ftjob-nope", "-c", str(config)])
    assert unknown.exit_code == 2
    assert "Could not find fine-tune" in unknown.output


def test_a_file_that_cannot_be_trained_on_is_never_uploaded(server: FineTuneServer, config: Path) -> None:
    before = len(server.files)
    broken = Path(__file__).resolve().parents[1] / "fixtures" / "finetune" / "broken.jsonl"
    result = runner.invoke(app, ["finetune", "start", str(broken), "-c", str(config)])
    assert result.exit_code == 1
    assert len(server.files) == before


def test_follow_tells_every_status_and_new_events_only(server: FineTuneServer, config: Path) -> None:
    client = client_for(load_config(config).openai)
    job = client.fine_tuning.jobs.create(
        training_file=client.files.create(file=SAMPLE.open("rb"), purpose="fine-tune").id,
        model="gpt-4o-mini-2024-07-18",
    )
    events: list[Event] = []
    statuses: list[str] = []
    naps: list[float] = []

    def on_status(found: Any) -> None:
        statuses.append(found.status)

    ended = follow(client, job.id, poll_s=7.0, on_event=events.append, on_status=on_status, sleep=naps.append)
    assert statuses == ["queued", "running", "running", "succeeded"]
    assert ended.status == "succeeded"
    assert ended.trained_tokens > 0
    assert len({e.message for e in events}) == len(events) == 5
    assert naps == [7.0] * 3  # one wait between two looks, none after the end
    assert json.loads(json.dumps(ended.to_dict()))["fine_tuned_model"].startswith("ft:gpt-4o-mini-2024-07-18:acme")
