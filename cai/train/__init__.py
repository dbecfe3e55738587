"""Thin builders of TRL trainers, fed by cai's files; our own loss only where TRL lacks one.

Common to every trainer: the model name resolves like everywhere in cai (``default``, a folder,
a ``.gguf`` file, a hub id), metrics go to ``OUT/metrics.jsonl`` one JSON object per log step,
and the trained model is saved to ``OUT`` as safetensors with its tokenizer, so that
``AutoModelFor...from_pretrained(OUT)`` loads it. A LoRA run saves its adapters merged into the
weights (a plain model folder, which every cai command loads) unless ``save_adapter_only`` asks
for the adapter alone; the last line of ``metrics.jsonl`` says which (``"saved"``, ``"merged"``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback


@dataclass(frozen=True)
class TrainSettings:
    model: str = "default"
    out: Path = Path("runs/model")
    lr: float = 1e-5
    epochs: float = 1.0
    max_steps: int = -1
    batch_size: int = 4
    seed: int = 0
    lora: bool = False
    resume: bool = False
    save_adapter_only: bool = False
    """With ``lora``: save only the adapter (a peft folder), not the merged model."""

    def trl_args(self) -> dict[str, Any]:
        import torch

        return {
            "output_dir": str(self.out),
            "learning_rate": self.lr,
            "num_train_epochs": self.epochs,
            "max_steps": self.max_steps,
            "per_device_train_batch_size": self.batch_size,
            "seed": self.seed,
            "report_to": [],
            "logging_steps": 1,
            "save_strategy": "steps",
            "save_steps": 200,
            "save_total_limit": 1,
            "use_cpu": not torch.cuda.is_available(),
        }


class JsonlMetrics(TrainerCallback):
    """Appends every log (loss, learning rate, TRL's metrics) to a JSONL file."""

    def __init__(self, path: Path):
        self.path = path

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and state.is_world_process_zero:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def load_rows(path: Path):
    """A JSONL file as a ``datasets.Dataset``, with a clear error when it is missing or empty."""
    from datasets import load_dataset

    from ..errors import InputError

    if not path.is_file():
        raise InputError(f"{path}: file not found")
    if not any(line.strip() for line in open(path, encoding="utf-8", errors="replace")):
        raise InputError(f"{path}: no rows (the file is empty)")
    return load_dataset("json", data_files=str(path), split="train")


def peft_config(lora: bool):
    if not lora:
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.05, target_modules="all-linear", task_type="CAUSAL_LM"
    )


def load_for_training(settings: TrainSettings, model_class=None, **kwargs):
    """Tokenizer and model of ``settings.model`` (any name cai resolves); creates ``settings.out``.

    ``model_class`` defaults to ``AutoModelForCausalLM``; ``kwargs`` go to its ``from_pretrained``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..models import resolve_model

    path = resolve_model(settings.model).path
    tok = AutoTokenizer.from_pretrained(path)
    model = (model_class or AutoModelForCausalLM).from_pretrained(path, **kwargs)
    settings.out.mkdir(parents=True, exist_ok=True)
    return tok, model


def fit(trainer, tok, settings: TrainSettings):
    """Train (from the last checkpoint with ``--resume``), then save model and tokenizer to OUT.

    What was saved (``"full"``, ``"merged"`` or ``"adapter"``) goes to ``result.metrics["saved"]``
    and, as ``{"step", "saved", "merged"}``, to the last line of ``OUT/metrics.jsonl``.
    """
    result = trainer.train(resume_from_checkpoint=last_checkpoint(settings.out, settings.resume))
    saved = _save(trainer, tok, settings)
    result.metrics["saved"] = saved
    if trainer.is_world_process_zero():
        with open(settings.out / "metrics.jsonl", "a", encoding="utf-8") as f:
            row = {"step": result.global_step, "saved": saved, "merged": saved == "merged"}
            f.write(json.dumps(row) + "\n")
    return result


_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")


def _save(trainer, tok, settings: TrainSettings) -> str:
    """Save the trained model and its tokenizer to OUT; returns ``full``, ``merged`` or ``adapter``.

    A LoRA model is merged (peft's ``merge_and_unload``) and saved as a plain model folder, with
    any adapter files of an earlier run removed (transformers would load those on top of it).
    When the weights are sharded (FSDP, DeepSpeed ZeRO-3), the adapter is saved first and the
    main process merges it into the base model read again from disk.
    """
    from transformers.integrations import is_deepspeed_zero3_enabled

    out = str(settings.out)
    kind = "full" if not settings.lora else "adapter" if settings.save_adapter_only else "merged"
    sharded = trainer.is_fsdp_enabled or is_deepspeed_zero3_enabled()
    if kind != "merged" or sharded:
        trainer.save_model(out)  # on the main process only; gathers sharded weights
    trainer.accelerator.wait_for_everyone()
    if trainer.is_world_process_zero():
        if kind == "merged":
            if sharded:
                from peft import AutoPeftModelForCausalLM

                model = AutoPeftModelForCausalLM.from_pretrained(out, dtype="auto")
            else:
                model = trainer.accelerator.unwrap_model(trainer.model)
            model.merge_and_unload().save_pretrained(out, safe_serialization=True)
            for name in _ADAPTER_FILES:
                (settings.out / name).unlink(missing_ok=True)
        tok.save_pretrained(out)
    trainer.accelerator.wait_for_everyone()
    return kind


def last_checkpoint(out: Path, resume: bool) -> str | None:
    if not resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.is_dir() else None
