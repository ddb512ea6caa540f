"""``turnout adapters train``: a LoRA adapter trained with PEFT on a chat fine-tuning file, then checked.

Each example is formatted with the base model's own chat template (what vLLM applies when it serves the
adapter), and the loss is taken on the last assistant turn only: the prompt's tokens (the conversation up to
the answer, with the template's generation prompt) are masked, so the adapter learns to answer, not to
repeat questions. Training is transformers' ``Trainer`` over a PEFT model, on the GPU when there is one and
on the CPU otherwise (the demo's tiny model trains in seconds), with its progress bar.

TRL's ``SFTTrainer`` would do the same formatting and masking, but pulls ``datasets`` and pyarrow (about
100 MB) into the gateway's environment for what is here twenty lines; PEFT, transformers and accelerate are
the well-kept libraries doing the work.

The adapter is written to a temporary directory beside ``--out`` and moved into place only once it is
saved and checked by the same validation the gateway runs before loading one (and the weight checks of
``turnout adapters check``): a failed run leaves nothing half-written behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.finetune.adapter_check import AdapterReport, check_adapter
from gateway.finetune.dataset import Example, read_dataset, text_of


@dataclass(frozen=True, slots=True)
class TrainOptions:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    epochs: float = 3.0
    learning_rate: float = 2e-4
    batch_size: int = 4
    seed: int = 0
    max_rank: int = 64  # what the serving vLLM accepts (--max-lora-rank): checked before training starts


@dataclass(frozen=True, slots=True)
class Trained:
    out: Path
    examples: int
    steps: int
    loss: float | None
    seconds: float
    device: str
    report: AdapterReport


class TrainingRefused(ValueError):
    """The inputs cannot be trained on (the message says why); nothing was written."""


def train_adapter(data: Path, base: Path, out: Path, options: TrainOptions, *, progress: bool = True) -> Trained:
    dataset = read_dataset(data)
    if not dataset.usable:
        first = next(f for f in dataset.findings if f.severity == "error")
        raise TrainingRefused(f"{data}: line {first.line}: {first.message} (turnout finetune check lists them all)")
    if not dataset.examples:
        raise TrainingRefused(f"{data}: no examples to train on")
    if options.rank > options.max_rank:
        raise TrainingRefused(f"rank {options.rank} is above the serving vLLM's max LoRA rank {options.max_rank}")
    if out.exists() and any(out.iterdir()):
        raise TrainingRefused(f"{out} exists and is not empty: choose another --out, or remove it first")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer, TrainingArguments

    started = time.monotonic()
    torch.manual_seed(options.seed)
    tokenizer = AutoTokenizer.from_pretrained(str(base), local_files_only=True)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(str(base), local_files_only=True, dtype=torch.float32)
    missing = sorted(set(options.target_modules) - {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()})
    if missing:
        raise TrainingRefused(f"target module(s) {', '.join(missing)} do not exist in {base}")
    context = int(getattr(model.config, "max_position_embeddings", 0) or 0) or None
    rows = [_tokenized(tokenizer, example, context) for example in dataset.examples]
    lora = LoraConfig(
        r=options.rank,
        lora_alpha=options.alpha,
        lora_dropout=options.dropout,
        target_modules=list(options.target_modules),
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        arguments = TrainingArguments(
            output_dir=str(Path(scratch) / "trainer"),
            num_train_epochs=options.epochs,
            learning_rate=options.learning_rate,
            per_device_train_batch_size=options.batch_size,
            logging_strategy="no",  # the bar shows progress; the final loss is reported once
            save_strategy="no",
            report_to=[],
            seed=options.seed,
            use_cpu=not torch.cuda.is_available(),
            disable_tqdm=not progress,
            dataloader_pin_memory=False,
        )
        collator = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=-100)
        trainer = Trainer(model=peft_model, args=arguments, train_dataset=_Rows(rows), data_collator=collator)
        result = trainer.train()
        staged = Path(scratch) / "adapter"
        peft_model.save_pretrained(str(staged))
        _record_base(staged, base)
        report = check_adapter(staged, base, max_rank=options.max_rank, names={str(base), base.name})
        if report.valid:
            if out.exists():
                out.rmdir()  # empty, checked above
            shutil.move(str(staged), str(out))
            report.path = out
    return Trained(
        out=out,
        examples=len(rows),
        steps=int(result.global_step),
        loss=float(result.training_loss) if result.training_loss is not None else None,
        seconds=time.monotonic() - started,
        device="cuda" if torch.cuda.is_available() else "cpu",
        report=report,
    )


def _tokenized(tokenizer: Any, example: Example, context: int | None) -> dict[str, list[int]]:
    """``input_ids`` of the whole conversation and ``labels`` that mask everything before the last answer."""
    messages = [{**m, "content": text_of(m)} for m in example.messages]
    whole = _ids(tokenizer.apply_chat_template(messages, tokenize=True, tools=example.tools))
    prompt = _ids(
        tokenizer.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, tools=example.tools)
    )
    masked = len(prompt) if whole[: len(prompt)] == prompt else 0  # a template that rewrites history: train on all
    labels = [-100] * masked + whole[masked:]
    if context is not None:
        whole, labels = whole[:context], labels[:context]
    return {"input_ids": whole, "attention_mask": [1] * len(whole), "labels": labels}


def _ids(found: Any) -> list[int]:
    if hasattr(found, "keys"):  # a BatchEncoding (transformers' default return in newer releases)
        found = found["input_ids"]
    return list(found)


def _record_base(adapter: Path, base: Path) -> None:
    """Name the base by its directory, as the gateway's configuration does (``base_model.path``)."""
    import json

    config_file = adapter / "adapter_config.json"
    config = json.loads(config_file.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(base)
    config_file.write_text(json.dumps(config, indent=2), encoding="utf-8")


class _Rows:
    """The tokenized examples as the map-style dataset ``Trainer`` reads."""

    def __init__(self, rows: list[dict[str, list[int]]]) -> None:
        self._rows = rows

    def __len__(self) -> int:
        return len(self._rows)

    def __getitem__(self, index: int) -> dict[str, list[int]]:
        return self._rows[index]


__all__ = ["TrainOptions", "Trained", "TrainingRefused", "train_adapter"]
