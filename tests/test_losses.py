"""The distillation loss against a plain re-statement of the seed's formula, and hand-computed values."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from arena_distill.losses import distill_loss


def seed_reference(s, y, teachers, T):
    """The seed's code, term by term: (CE + KL_t1 + cos_t1 + KL_t2 + cos_t2 + ...) / (1 + 2n)."""
    ce = nn.CrossEntropyLoss()(s, y)
    kl_fn = nn.KLDivLoss(reduction="batchmean")
    cos_fn = nn.CosineEmbeddingLoss()
    terms = [ce]
    for t in teachers:
        terms.append(kl_fn(F.log_softmax(s / T, dim=-1), F.softmax(t / T, dim=-1)))
        terms.append(cos_fn(F.softmax(t / T, dim=-1), F.softmax(s / T, dim=-1), torch.ones(s.shape[0])))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("T", [1.0, 2.0])
@pytest.mark.parametrize("n_teachers", [1, 2, 3])
def test_matches_seed_formula(T, n_teachers):
    g = torch.Generator().manual_seed(7 + n_teachers)
    s = torch.randn(16, 3, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 3, (16,), generator=g)
    teachers = [torch.randn(16, 3, generator=g, dtype=torch.float64) * 2 for _ in range(n_teachers)]
    ours, parts = distill_loss(s, y, teachers, temperature=T)
    ref = seed_reference(s.float(), y, [t.float() for t in teachers], T)
    assert abs(ours.item() - ref.item()) < 1e-6
    assert set(parts) == {"ce", *(f"kl_{i}" for i in range(n_teachers)), *(f"cos_{i}" for i in range(n_teachers))}


def test_two_teachers_is_divided_by_five_and_grad_flows():
    s = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0])
    t1, t2 = torch.randn(4, 3), torch.randn(4, 3)
    loss, parts = distill_loss(s, y, [t1, t2])
    assert math.isclose(loss.item(), sum(parts.values()) / 5, rel_tol=1e-6)
    loss.backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_hand_computed_values():
    # student uniform, teacher one-hot-ish: KL = sum p_t log(p_t / (1/3)), cos from explicit vectors.
    s = torch.zeros(1, 3)
    t = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    _, parts = distill_loss(s, torch.tensor([0]), [t])
    p = [0.5, 0.25, 0.25]
    kl = sum(pi * math.log(pi * 3) for pi in p)
    cos = 1 - sum(pi / 3 for pi in p) / (math.sqrt(sum(pi * pi for pi in p)) * math.sqrt(3 / 9))
    assert math.isclose(parts["ce"], math.log(3), rel_tol=1e-6)
    assert math.isclose(parts["kl_0"], kl, rel_tol=1e-5)
    assert math.isclose(parts["cos_0"], cos, rel_tol=1e-5)


def test_student_equal_to_teacher_has_zero_distill_terms():
    s = torch.randn(8, 3)
    _, parts = distill_loss(s, torch.zeros(8, dtype=torch.long), [s.clone()])
    assert abs(parts["kl_0"]) < 1e-6 and abs(parts["cos_0"]) < 1e-6


def test_weights_and_no_teacher():
    s, y, t = torch.randn(5, 3), torch.randint(0, 3, (5,)), torch.randn(5, 3)
    ce_only, parts = distill_loss(s, y, [])
    assert math.isclose(ce_only.item(), F.cross_entropy(s, y).item(), rel_tol=1e-6) and set(parts) == {"ce"}
    weighted, p = distill_loss(s, y, [t], w_ce=2.0, w_kl=0.5, w_cos=0.0)
    assert math.isclose(weighted.item(), (2 * p["ce"] + 0.5 * p["kl_0"]) / 3, rel_tol=1e-6)


def test_confident_teacher_zero_probabilities_are_finite():
    # A teacher logit of -inf-like magnitude gives p_t = 0 exactly: 0 * log 0 must count as 0, not NaN.
    s = torch.randn(2, 3)
    t = torch.tensor([[100.0, -100.0, -100.0], [-100.0, 100.0, -100.0]])
    loss, _ = distill_loss(s, torch.tensor([0, 1]), [t])
    assert torch.isfinite(loss)


# ------------------------------------------------------------------------------------------------ SFT loss
def _rows_ce(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, int]]:
    """Literal restatement: per row, the summed next-token CE over labelled tokens and their count."""
    out = []
    for lg, lb in zip(logits, labels):
        total, count = 0.0, 0
        for t in range(lb.shape[0] - 1):
            if lb[t + 1] != -100:
                total += float(-torch.log_softmax(lg[t].double(), dim=-1)[lb[t + 1]])
                count += 1
        out.append((total, count))
    return out


def _sft_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g)
    labels = torch.randint(0, 11, (3, 7), generator=g)
    labels[0, :5] = -100          # row 0: 1 labelled target (the last token)
    labels[1, :2] = -100          # row 1: 4 targets
    labels[2, 3:] = -100          # row 2: 2 targets (right padding ignored)
    return logits, labels


def test_sft_loss_sequence_is_the_mean_of_row_means():
    from arena_distill.losses import sft_loss

    logits, labels = _sft_batch()
    rows = _rows_ce(logits, labels)
    want = sum(t / c for t, c in rows) / len(rows)
    assert sft_loss(logits, labels, "sequence").item() == pytest.approx(want, rel=1e-6)


def test_sft_loss_token_over_an_accumulated_step_weighs_every_token_the_same():
    """Three micro-batches of one row, accumulation 3 on 1 process: the engine divides each loss by 3; with
    scale = 3 the step's gradient is that of sum(CE) / all labelled tokens of the step."""
    from arena_distill.losses import sft_loss

    logits, labels = _sft_batch(1)
    rows = _rows_ce(logits, labels)
    n_step = sum(c for _, c in rows)
    want = sum(t for t, _ in rows) / n_step
    leaf = logits.clone().requires_grad_(True)
    accum = 3
    total = sum(sft_loss(leaf[i:i + 1], labels[i:i + 1], "token", step_targets=n_step, scale=accum) / accum
                for i in range(3))
    assert total.item() == pytest.approx(want, rel=1e-6)
    total.backward()
    ref = logits.clone().requires_grad_(True)
    flat = torch.nn.functional.cross_entropy(ref[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1),
                                             ignore_index=-100, reduction="sum") / n_step
    flat.backward()
    torch.testing.assert_close(leaf.grad, ref.grad)
    # the two rules differ whenever rows have different numbers of targets
    assert sft_loss(logits, labels, "sequence").item() != pytest.approx(want, rel=1e-3)


def test_sft_loss_rejects_unknown_norms_and_a_missing_step_count():
    from arena_distill.losses import sft_loss

    logits, labels = _sft_batch()
    with pytest.raises(ValueError, match="loss_norm"):
        sft_loss(logits, labels, "batch")
    with pytest.raises(ValueError, match="step_targets"):
        sft_loss(logits, labels, "token")
