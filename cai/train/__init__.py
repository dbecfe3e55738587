"""Thin builders of TRL trainers, fed by cai's files; our own loss only where TRL lacks one.

Common to every trainer: the model name resolves like everywhere in cai (``default``, a folder,
a ``.gguf`` file, a hub id), metrics go to ``OUT/metrics.jsonl`` one JSON object per log step,
and the trained model is saved to ``OUT`` as safetensors with its tokenizer, so that
``AutoModelFor...from_pretrained(OUT)`` loads it. A LoRA run saves its adapters merged into the
weights (a plain model folder, which every cai command loads) unless ``save_adapter_only`` asks
for the adapter alone; the last line of ``metrics.jsonl`` says which (``"saved"``, ``"merged"``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


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
