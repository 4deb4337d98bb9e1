"""Slow, independent reference implementations of the losses (SPEC sections 1-5).

Plain Python floats (IEEE float64) and explicit loops over anchors and
candidates; nothing here calls mscon. Inputs are nested lists or tensors
(converted with ``.tolist()``); outputs are Python floats.
"""

from __future__ import annotations

import math


def _rows(x) -> list:
    return x.tolist() if hasattr(x, "tolist") else list(x)


def normalize(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(t * t for t in v))
    return [t / max(norm, 1e-12) for t in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def log_sum_exp(values: list[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def contrastive_loss(
    views: list[list[float]],
    image: list[int],
    weight,
    tau: float,
    form: str = "out",
) -> float:
    """Mean over valid anchors of the per-anchor contrastive cross-entropy.

    Args:
        views: N unnormalised embeddings.
        image: N image indices (for nothing but the caller's ``weight``).
        weight: weight(i, a) -> target weight (>= 0) of candidate a for anchor i.
        tau: temperature.
        form: "out" or "in".
    """
    z = [normalize(v) for v in views]
    n = len(z)
    total, count = 0.0, 0
    for i in range(n):
        cands = [a for a in range(n) if a != i]
        if not cands:
            continue
        w = {a: weight(i, a) for a in cands}
        w_sum = sum(w.values())
        if w_sum <= 0:
            continue
        logits = {a: dot(z[i], z[a]) / tau for a in cands}
        log_den = log_sum_exp(list(logits.values()))
        if form == "out":
            loss = -sum(w[a] / w_sum * (logits[a] - log_den) for a in cands)
        else:
            prob = sum(w[a] / w_sum * math.exp(logits[a] - log_den) for a in cands)
            loss = -math.log(prob)
        total += loss
        count += 1
    return total / count if count else 0.0


def supcon(features, labels=None, mask=None, tau: float = 0.1, form: str = "out") -> float:
    """SupCon / SimCLR of features (B, V, d) or (N, d) (V = 1).

    labels (B,), -1 = missing; mask (B, B) bool or float (other views of the same
    image always weight 1).
    """
    feats = _rows(features)
    if not isinstance(feats[0][0], list):  # (N, d)
        feats = [[row] for row in feats]
    views, image = [], []
    for b, per_image in enumerate(feats):
        for v in per_image:
            views.append(v)
            image.append(b)
    lab = _rows(labels) if labels is not None else None
    m = _rows(mask) if mask is not None else None

    def weight(i: int, a: int) -> float:
        bi, ba = image[i], image[a]
        if lab is not None:
            return 1.0 if lab[bi] != -1 and lab[bi] == lab[ba] else 0.0
        if m is not None:
            if bi == ba:
                return 1.0
            return float(m[bi][ba])
        return 1.0 if bi == ba else 0.0

    return contrastive_loss(views, image, weight, tau, form)


def ntxent(z0, z1, tau: float = 0.5) -> float:
    """SimCLR's NT-Xent written directly: 2B anchors, positive = the other view."""
    a, b = _rows(z0), _rows(z1)
    z = [normalize(v) for v in a + b]
    n2, half = len(z), len(a)
    total = 0.0
    for i in range(n2):
        j = (i + half) % n2
        den = log_sum_exp([dot(z[i], z[k]) / tau for k in range(n2) if k != i])
        total += den - dot(z[i], z[j]) / tau
    return total / n2


def combine(losses: list[float], valid: list[bool], mode: str, log_vars, weights) -> float:
    total = 0.0
    for c, (loss, ok) in enumerate(zip(losses, valid, strict=True)):
        if not ok:
            continue
        s = float(log_vars[c])
        if mode == "uncertainty":
            total += math.exp(-s) * loss + s / 2
        elif mode == "temperature":
            total += loss + s / 2
        elif mode == "equal":
            total += loss
        elif mode == "fixed":
            total += float(weights[c]) * loss
        else:
            raise AssertionError(mode)
    return total


def _has_valid_anchor(labels_c: list[int], num_views: int) -> bool:
    for i, y in enumerate(labels_c):
        if y == -1:
            continue
        if num_views > 1 or any(y == o for k, o in enumerate(labels_c) if k != i):
            return True
    return False


def mscon(
    features, labels, tau: float, mode: str = "uncertainty", log_vars=None, weights=None, form="out"
) -> tuple[float, list[float]]:
    """(total, per-similarity losses) for features: C items (B, V, d), labels (B, C)."""
    lab = _rows(labels)
    heads = [_rows(f) for f in features]
    s = [float(x) for x in log_vars] if log_vars is not None else [0.0] * len(heads)
    losses, valid = [], []
    for c, head in enumerate(heads):
        labels_c = [row[c] for row in lab]
        t = tau * math.exp(s[c]) if mode == "temperature" else tau
        losses.append(supcon(head, labels_c, tau=t, form=form))
        valid.append(_has_valid_anchor(labels_c, len(head[0])))
    return combine(losses, valid, mode, s, weights), losses


def multitask_ce(
    logits, labels, mode: str = "uncertainty", log_vars=None, weights=None
) -> tuple[float, list[float]]:
    """(total, per-task mean CE over labelled rows)."""
    lab = _rows(labels)
    s = [float(x) for x in log_vars] if log_vars is not None else [0.0] * len(logits)
    losses, valid = [], []
    for c, x in enumerate(logits):
        rows = _rows(x)
        scale = math.exp(-s[c]) if mode == "temperature" else 1.0
        total, count = 0.0, 0
        for r, row in enumerate(rows):
            y = lab[r][c]
            if y == -1:
                continue
            scaled = [v * scale for v in row]
            total += log_sum_exp(scaled) - scaled[y]
            count += 1
        losses.append(total / count if count else 0.0)
        valid.append(count > 0)
    return combine(losses, valid, mode, s, weights), losses


def supcontrast_reference(features, labels, temperature: float):
    """SupContrast's (HobbitLong) SupConLoss, L_out, as published (a known trap in float16).

    Kept to pin its NaN on low-temperature float16 inputs; takes normalised (B, V, d).
    """
    import torch

    device = features.device
    batch_size, contrast_count = features.shape[0], features.shape[1]
    labels = labels.contiguous().view(-1, 1)
    mask = torch.eq(labels, labels.T).to(features.dtype).to(device)
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature, anchor_count = contrast_feature, contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(
        torch.ones_like(mask),
        1,
        torch.arange(batch_size * anchor_count).view(-1, 1).to(device),
        0,
    )
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / 0.07) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()
