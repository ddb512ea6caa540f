"""The README's examples and quotes, read the way the demo and the end-to-end test read them.

Running the examples needs the demo stack (tests/e2e/test_readme.py); these checks need only the files.
"""

from __future__ import annotations

import demo
import pytest
from readme_examples import REPO_ROOT, Excerpt, examples, excerpts

EXAMPLES = examples()


def test_the_readme_has_examples_to_run() -> None:
    sections = {example.section for example in EXAMPLES}
    assert "Quickstart" in sections
    assert len(EXAMPLES) >= 6
    assert {example.language for example in EXAMPLES} == {"bash", "python"}
    assert all(example.expected for example in EXAMPLES), "every example says what it prints"


def test_the_parser_reads_markers_and_expectations() -> None:
    text = (
        "## Start\n\n<!-- example -->\n```bash\necho hi  # → hi\n# → there\n```\n\n"
        "```bash\nnot an example\n```\n<!-- excerpt: a.txt -->\n```yaml\nkey: 1\n```\n"
    )
    found = examples(text)
    assert len(found) == 1
    assert found[0].expected == ("hi", "there")
    assert found[0].section == "Start"
    assert found[0].line == 3
    assert excerpts(text) == [Excerpt("a.txt", "key: 1\n", 12)]


@pytest.mark.parametrize("excerpt", excerpts(), ids=lambda e: f"line-{e.line}")
def test_quoted_files_are_quoted_as_they_are(excerpt: Excerpt) -> None:
    source = (REPO_ROOT / excerpt.path).read_text(encoding="utf-8")
    assert excerpt.text in source, f"README.md:{excerpt.line} no longer matches {excerpt.path}"


def test_the_policy_the_readme_shows_is_the_demos_whole_policy() -> None:
    quoted = [e for e in excerpts() if e.path == "examples/demo.yaml"]
    assert quoted, "the Policies section quotes the demo's policy"
    assert quoted[0].text.startswith("policies:\n")
    assert (REPO_ROOT / "examples/demo.yaml").read_text(encoding="utf-8").rstrip().endswith(quoted[0].text.rstrip())


def test_the_demo_prints_the_quickstart_examples() -> None:
    banner = demo._banner()
    quickstart = [example for example in EXAMPLES if example.section == "Quickstart"]
    assert quickstart
    for example in quickstart:
        assert example.code.rstrip() in banner
