"""The distillation loss of the LMSYS 1st-place solution, generalised to any number of teachers.

    loss = (w_ce * CE(s, y) + sum_t [ w_kl * KL_t + w_cos * COS_t ]) / (1 + 2 * n_teachers)
    KL_t  = KLDivLoss(reduction="batchmean")(log_softmax(s / T), softmax(t / T))
    COS_t = CosineEmbeddingLoss()(softmax(t / T), softmax(s / T), target = +1)

With two teachers and unit weights this is exactly the seed's ``(CE + KL1 + cos1 + KL2 + cos2) / 5``.
The divisor stays ``1 + 2n`` whatever the weights, so weights change the balance, not the scale rule.
No T^2 factor: the seed does not use one.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def distill_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: Sequence[torch.Tensor],
                 temperature: float = 1.0, w_ce: float = 1.0, w_kl: float = 1.0, w_cos: float = 1.0
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Return (total loss, parts) with parts ``ce``, ``kl_<i>``, ``cos_<i>`` (unweighted, detached)."""
    s = student_logits.float()
    ce = F.cross_entropy(s, labels)
    log_p_s = F.log_softmax(s / temperature, dim=-1)
    p_s = log_p_s.exp()
    total = w_ce * ce
    parts = {"ce": ce.detach().item()}
    ones = torch.ones(s.shape[0], device=s.device)
    for i, t in enumerate(teacher_logits):
        p_t = F.softmax(t.float().to(s.device) / temperature, dim=-1)
        # batchmean KL(p_t || p_s) = sum p_t (log p_t - log p_s) / batch; xlogy gives 0 * log 0 = 0.
        kl = (torch.special.xlogy(p_t, p_t) - p_t * log_p_s).sum() / s.shape[0]
        cos = F.cosine_embedding_loss(p_t, p_s, ones)
        total = total + w_kl * kl + w_cos * cos
        parts[f"kl_{i}"] = kl.detach().item()
        parts[f"cos_{i}"] = cos.detach().item()
    total = total / (1 + 2 * len(teacher_logits))
    return total, parts


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, norm: str, *, step_targets: int = 0,
             scale: float = 1.0, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy on the labelled (response) tokens of one micro-batch, normalised two ways.

    ``sequence``: the mean over rows of each row's token-mean; every row weighs the same. This is what the
    seed's run computed: LLaMA-Factory on transformers 4.43 with ``per_device_train_batch_size 1`` and no
    accumulation takes each row's token-mean, and DDP averages the rows of the 8 GPUs.
    ``token``: the sum over tokens divided by ``step_targets``, the number of labelled tokens in the whole
    optimizer step (every micro-batch of every rank); every token weighs the same. This is what LLaMA-Factory,
    TRL, torchtune and HF Trainer do since late 2024 (transformers' ``num_items_in_batch``). The engine divides
    by the accumulation steps and DDP averages over ranks, so pass ``scale = accumulation * processes`` to undo
    both: the gradient is then exactly that of sum(CE) / step_targets.
    """
    shift_logits = logits[:, :-1].float()
    shift_labels = labels[:, 1:]
    per_token = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=ignore_index,
                                reduction="none")
    valid = shift_labels != ignore_index
    if norm == "sequence":
        return (per_token.sum(dim=1) / valid.sum(dim=1).clamp(min=1)).mean()
    if norm == "token":
        if step_targets <= 0:
            raise ValueError("loss_norm=token needs step_targets > 0 (labelled tokens in the optimizer step)")
        return per_token.sum() * (scale / step_targets)
    raise ValueError(f"loss_norm must be 'sequence' or 'token', got {norm!r}")
