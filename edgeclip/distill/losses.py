"""The three supervision types of an edge. Inputs are L2-normalised (B, D) features; the pair
``(a, b)`` is aligned row by row (row i of a and row i of b come from the same image-caption pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def infonce(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE: mean of CE(a b^T * s, diag) and CE(b a^T * s, diag)."""
    logits = logit_scale * a @ b.T
    target = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


def infonce_grouped(image: torch.Tensor, text: torch.Tensor, group: torch.Tensor,
                    logit_scale: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE with several captions per image (``data.captions_per_image``):
    ``image`` (B, D), ``text`` (M, D), ``group`` (M,) the row of ``image`` each caption belongs to.

    text->image: CE over the B images, target ``group[j]``. image->text: one term per
    (image, caption) pair, the CE of that caption against every caption of OTHER images (the
    image's other captions are left out of the denominator, not pushed away). With one caption
    per image (``group = arange(B)``) this is :func:`infonce` exactly."""
    logits = logit_scale * image @ text.T  # (B, M)
    t2i = F.cross_entropy(logits.T, group)
    rows = logits[group]  # (M, M): row j = logits of caption j's image over every caption
    same = group[:, None] == group[None, :]
    eye = torch.eye(len(group), dtype=torch.bool, device=group.device)
    rows = rows.masked_fill(same & ~eye, float("-inf"))
    i2t = F.cross_entropy(rows, torch.arange(len(group), device=group.device))
    return 0.5 * (t2i + i2t)


def fd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Feature distance: mean over the batch of ||normalize(s) - t||^2 (0 when equal)."""
    return (F.normalize(student, dim=-1) - teacher).pow(2).sum(-1).mean()


def sd(student_sim: torch.Tensor, teacher_sim: torch.Tensor, temperature: float,
       mask_diagonal: bool = False) -> torch.Tensor:
    """Similarity distance: KL(softmax(teacher_sim/T) || softmax(student_sim/T)) by rows, mean
    over rows. 0 when the matrices are equal. With ``mask_diagonal`` the (trivial)
    self-similarities are left out of both distributions.

    Not multiplied by T^2 (Hinton's scaling for logits): the inputs are cosine similarities, and
    with T = 0.05 that factor made the edge's gradient ~300x weaker than an InfoNCE edge's, so the
    intra-modal student-student family did nothing (measured: loss 0.003 vs 1-4 for the others)."""
    s, t = student_sim / temperature, teacher_sim / temperature
    if mask_diagonal:
        eye = torch.eye(s.shape[0], dtype=torch.bool, device=s.device)
        s = s.masked_fill(eye, float("-inf"))
        t = t.masked_fill(eye, float("-inf"))
    log_p_s = F.log_softmax(s, dim=-1)
    log_p_t = F.log_softmax(t, dim=-1)
    p_t = log_p_t.exp()
    terms = torch.where(p_t > 0, p_t * (log_p_t - log_p_s), torch.zeros_like(p_t))
    return terms.sum(-1).mean()
