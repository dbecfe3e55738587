"""Thin builders of TRL trainers, fed by cai's files; our own loss only where TRL lacks one.

Common to every trainer: the model name resolves like everywhere in cai (``default``, a folder,
a ``.gguf`` file, a hub id), metrics go to ``OUT/metrics.jsonl`` one JSON object per log step,
and the trained model is saved to ``OUT`` as safetensors with its tokenizer, so that
``AutoModelFor...from_pretrained(OUT)`` loads it.
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
    """Train (from the last checkpoint with ``--resume``), then save model and tokenizer to OUT."""
    result = trainer.train(resume_from_checkpoint=last_checkpoint(settings.out, settings.resume))
    trainer.save_model(str(settings.out))
    tok.save_pretrained(str(settings.out))
    return result


def last_checkpoint(out: Path, resume: bool) -> str | None:
    if not resume:
        return None
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(out)) if out.is_dir() else None
