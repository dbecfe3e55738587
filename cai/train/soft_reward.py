"""The soft-label reward model: TRL's RewardTrainer with the cross-entropy to ``p_chosen`` as
its loss (see ``cai.train.rm``), and its held-out accuracy and calibration."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference


def soft_preference_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, p_chosen: torch.Tensor
) -> torch.Tensor:
    d = r_chosen - r_rejected
    return -(p_chosen * F.logsigmoid(d) + (1 - p_chosen) * F.logsigmoid(-d)).mean()


class SoftLabelCollator(DataCollatorForPreference):
    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        out = super().torch_call(
            [{k: v for k, v in e.items() if k != "p_chosen"} for e in examples]
        )
        out["p_chosen"] = torch.tensor([e["p_chosen"] for e in examples], dtype=torch.float)
        return out


class SoftRewardTrainer(RewardTrainer):
    def _set_signature_columns_if_needed(self):
        self._signature_columns = ["chosen_ids", "rejected_ids", "p_chosen"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        p = inputs.pop("p_chosen")
        inputs.pop("margin", None)
        outputs = model(**inputs, use_cache=False)
        r_chosen, r_rejected = torch.chunk(outputs.logits.squeeze(-1), chunks=2)
        loss = soft_preference_loss(r_chosen, r_rejected, p.to(r_chosen.dtype))
        mode = "train" if model.training else "eval"
        with torch.no_grad():
            self._metrics[mode]["accuracy"].append((r_chosen > r_rejected).float().mean().item())
            self._metrics[mode]["margin"].append((r_chosen - r_rejected).mean().item())
        return (loss, outputs) if return_outputs else loss


def heldout(trainer, rows, tok, ece) -> dict[str, Any]:
    """Accuracy (chosen scored higher) and ECE of sigmoid(d) against the soft labels."""
    model = trainer.model.eval()
    probs, labels = [], []
    for row in rows:
        scores = []
        for answer in (row["chosen"], row["rejected"]):
            text = tok.apply_chat_template(row["prompt"] + answer, tokenize=False)
            ids = tok(text, add_special_tokens=False, return_tensors="pt").to(model.device)
            with torch.no_grad():
                scores.append(model(**ids).logits[0, 0].item())
        probs.append(float(torch.sigmoid(torch.tensor(scores[0] - scores[1]))))
        labels.append(row["p_chosen"])
    acc = sum(p > 0.5 for p in probs) / len(probs)
    conf = [max(p, 1 - p) for p in probs]
    right = [(p > 0.5) == (lab >= 0.5) for p, lab in zip(probs, labels)]
    return {"heldout_pairs": len(probs), "heldout_accuracy": acc, "heldout_ece": ece(conf, right)}
