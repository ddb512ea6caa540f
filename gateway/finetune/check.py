"""What ``turnout finetune check`` and ``estimate`` say about a training file: its problems, its tokens, and
what training on it costs.

The counts the providers give: OpenAI refuses fewer than 10 examples, and recommends starting with 50 to
100 and expecting clear gains from several hundred; below those the check warns (and fails below 10).
An example longer than the target's training context is truncated by OpenAI (and cannot be trained whole
on an adapter's base model): a warning naming its line and length. Identical examples are warnings too.

Costs:

* **OpenAI fine-tune**: the file's tokens (each example capped at the training context) times the epochs,
  at the model's training price (:data:`OPENAI_TRAINING`, OpenAI's published prices; the configuration's
  ``costs.openai.training_usd_per_1m_tokens`` overrides or completes it). Without ``--epochs``, OpenAI's
  own default: 3 epochs, raised so that at least 100 examples are seen and lowered so that at most 25,000
  are (between 1 and 25).
* **LoRA adapter**: the same tokens, counted by the base model's tokenizer, at ``costs.vllm
  .training_tokens_per_second`` per GPU: GPU-hours, at ``costs.vllm.gpu_hour_usd``, the price the gateway
  meters self-hosted routes with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from gateway.config.model import CostsConfig
from gateway.finetune.dataset import Dataset, Finding
from gateway.finetune.tokens import TokenCounter, base_of

MIN_EXAMPLES = 10  # OpenAI refuses fewer
RECOMMENDED_START = 50  # "we recommend starting with 50 to 100 well-crafted demonstrations"
ROBUST = 300  # "several hundred" for clear, robust gains


@dataclass(frozen=True, slots=True)
class TrainingTerms:
    usd_per_1m_tokens: float
    context: int  # the longest training example, in tokens


# OpenAI's published fine-tuning terms (platform.openai.com/docs/pricing and /docs/guides/fine-tuning, as of
# this release): US dollars per million training tokens and the context of one training example. Prices
# change: costs.openai.training_usd_per_1m_tokens overrides them.
OPENAI_TRAINING: dict[str, TrainingTerms] = {
    "gpt-4.1-2025-04-14": TrainingTerms(25.00, 65_536),
    "gpt-4.1-mini-2025-04-14": TrainingTerms(5.00, 65_536),
    "gpt-4.1-nano-2025-04-14": TrainingTerms(1.50, 65_536),
    "gpt-4o-2024-08-06": TrainingTerms(25.00, 65_536),
    "gpt-4o-mini-2024-07-18": TrainingTerms(3.00, 65_536),
    "gpt-3.5-turbo-0125": TrainingTerms(8.00, 16_385),
}


@dataclass(slots=True)
class CheckReport:
    """A checked file: the dataset's own findings and those only tokens show, with each example's tokens."""

    dataset: Dataset
    counter: str
    context: int | None
    tokens: list[tuple[int, int]] = field(default_factory=list)  # (line, tokens) of each well-formed example
    findings: list[Finding] = field(default_factory=list)

    @property
    def usable(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def total_tokens(self) -> int:
        return sum(count for _, count in self.tokens)

    def billed_tokens(self) -> int:
        """Tokens one epoch trains on: each example capped at the context (OpenAI truncates longer ones)."""
        cap = self.context
        return sum(count if cap is None else min(count, cap) for _, count in self.tokens)

    def describe(self) -> dict[str, Any]:
        counts = sorted(count for _, count in self.tokens)
        return {
            "file": str(self.dataset.path),
            "usable": self.usable,
            "lines": self.dataset.lines,
            "examples": len(self.tokens),
            "tokenizer": self.counter,
            "context": self.context,
            "tokens": {
                "total": self.total_tokens,
                "billed_per_epoch": self.billed_tokens(),
                "min": counts[0] if counts else 0,
                "median": counts[len(counts) // 2] if counts else 0,
                "max": counts[-1] if counts else 0,
            },
            "errors": sum(f.severity == "error" for f in self.findings),
            "warnings": sum(f.severity == "warning" for f in self.findings),
            "findings": [f.describe() for f in self.findings],
        }


def check(dataset: Dataset, counter: TokenCounter) -> CheckReport:
    report = CheckReport(dataset, counter.name, counter.context, findings=list(dataset.findings))
    seen: dict[bytes, int] = {}
    for example in dataset.examples:
        count = counter.count(example)
        report.tokens.append((example.line, count))
        if counter.context is not None and count > counter.context:
            report.findings.append(
                Finding(
                    example.line,
                    "warning",
                    f"{count:,} tokens, more than the {counter.context:,} the target trains on: it would be truncated",
                )
            )
        first = seen.setdefault(example.key(), example.line)
        if first != example.line:
            report.findings.append(Finding(example.line, "warning", f"the same example as line {first}"))
    report.findings += _count_findings(len(dataset.examples))
    report.findings.sort(key=lambda f: (f.line is not None, f.line or 0))
    return report


def _count_findings(examples: int) -> list[Finding]:
    if examples < MIN_EXAMPLES:
        return [Finding(None, "error", f"{examples} well-formed examples; OpenAI needs at least {MIN_EXAMPLES}")]
    if examples < RECOMMENDED_START:
        return [
            Finding(
                None,
                "warning",
                f"{examples} examples: the providers recommend starting with {RECOMMENDED_START} to 100, and "
                "several hundred for robust results",
            )
        ]
    if examples < ROBUST:
        return [Finding(None, "warning", f"{examples} examples: several hundred give more robust results")]
    return []


def default_epochs(examples: int) -> int:
    """OpenAI's ``n_epochs: auto``: 3, raised so at least 100 examples are trained on and lowered so at most
    25,000 are, within 1 to 25."""
    if examples <= 0:
        return 3
    if examples * 3 < 100:
        return min(25, math.ceil(100 / examples))
    if examples * 3 > 25_000:
        return max(1, 25_000 // examples)
    return 3


@dataclass(frozen=True, slots=True)
class OpenAIEstimate:
    model: str
    tokens_per_epoch: int
    epochs: int
    usd_per_1m_tokens: float

    @property
    def training_tokens(self) -> int:
        return self.tokens_per_epoch * self.epochs

    @property
    def usd(self) -> float:
        return self.training_tokens * self.usd_per_1m_tokens / 1_000_000

    def describe(self) -> dict[str, Any]:
        return {
            "route": "openai fine-tune",
            "model": self.model,
            "tokens_per_epoch": self.tokens_per_epoch,
            "epochs": self.epochs,
            "training_tokens": self.training_tokens,
            "usd_per_1m_training_tokens": self.usd_per_1m_tokens,
            "usd": round(self.usd, 6),
        }


@dataclass(frozen=True, slots=True)
class AdapterEstimate:
    base: str
    tokens_per_epoch: int
    epochs: int
    tokens_per_second: float
    gpu_hour_usd: float

    @property
    def training_tokens(self) -> int:
        return self.tokens_per_epoch * self.epochs

    @property
    def gpu_hours(self) -> float:
        return self.training_tokens / self.tokens_per_second / 3600

    @property
    def usd(self) -> float:
        return self.gpu_hours * self.gpu_hour_usd

    def describe(self) -> dict[str, Any]:
        return {
            "route": "lora adapter",
            "base": self.base,
            "tokens_per_epoch": self.tokens_per_epoch,
            "epochs": self.epochs,
            "training_tokens": self.training_tokens,
            "training_tokens_per_second": self.tokens_per_second,
            "gpu_hours": round(self.gpu_hours, 6),
            "gpu_hour_usd": self.gpu_hour_usd,
            "usd": round(self.usd, 6),
        }


@dataclass(frozen=True, slots=True)
class TrainingEstimates:
    epochs: int
    openai: OpenAIEstimate | None  # None: no training price known for the model
    adapter: AdapterEstimate | None  # None: no base model to count with


def estimate_training(
    report: CheckReport,
    model: str,
    costs: CostsConfig,
    epochs: int | None,
    adapter_tokens: int | None = None,
    base: str = "",
) -> TrainingEstimates:
    """What training on a checked file costs: an OpenAI fine-tune of ``model`` (``report`` counted with its
    tokenizer) and, given the file's ``adapter_tokens`` by the base model's tokenizer, a LoRA adapter on it.
    Without ``epochs``, OpenAI's default for the file's size."""
    passes = epochs if epochs is not None else default_epochs(len(report.tokens))
    price = training_price(base_of(model), costs.openai.training_usd_per_1m_tokens)
    openai = OpenAIEstimate(model, report.billed_tokens(), passes, price) if price is not None else None
    vllm = costs.vllm
    adapter = (
        AdapterEstimate(base, adapter_tokens, passes, vllm.training_tokens_per_second, vllm.gpu_hour_usd)
        if adapter_tokens is not None
        else None
    )
    return TrainingEstimates(passes, openai, adapter)


def training_price(model: str, overrides: dict[str, float]) -> float | None:
    """US dollars per million training tokens for fine-tuning ``model`` (the configuration's first)."""
    if model in overrides:
        return overrides[model]
    terms = OPENAI_TRAINING.get(model)
    return terms.usd_per_1m_tokens if terms is not None else None


def training_context(model: str) -> int | None:
    terms = OPENAI_TRAINING.get(model)
    return terms.context if terms is not None else None


__all__ = [
    "OPENAI_TRAINING",
    "AdapterEstimate",
    "CheckReport",
    "OpenAIEstimate",
    "TrainingEstimates",
    "TrainingTerms",
    "check",
    "default_epochs",
    "estimate_training",
    "training_context",
    "training_price",
]
