"""Scores of a caption attack: target and keyword success, BLEU to the target and to the original, budget used.

BLEU is torchmetrics' ``bleu_score`` (Papineni et al., ACL 2002: corpus-level modified n-gram precision with a
brevity penalty, no smoothing), chosen over sacrebleu because it is PyTorch-native with no tokenizer data to
fetch and applies the tokenization we give it (whitespace over :func:`robustlab.captioning.tokenize`), which is
what caption papers' BLEU (pycocoevalcap) does rather than sacrebleu's MT-oriented ``13a`` tokenizer.
Captions are compared after :func:`~robustlab.captioning.tokenize`, so case and punctuation never count.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

from torch import Tensor

from robustlab.captioning import tokenize
from robustlab.errors import ConfigError
from robustlab.threat import Norm, perturbation_norm

__all__ = ["CAPTION_METRICS", "bleu", "caption_metrics", "fisher_p_above", "goal_reached", "perturbation_metrics"]

CAPTION_METRICS: dict[str, str] = {
    "clean_exact": "higher is better for the model: clean caption equals the reference",
    "adv_exact": "higher is better for the model: adversarial caption still equals the reference",
    "changed": "lower is better for the model: adversarial caption differs from the clean caption",
    "target_success": "lower is better for the model: adversarial caption equals the target caption",
    "target_clean": "context: clean captions that already equal the target (the floor of target_success)",
    "keyword_success": "lower is better for the model: adversarial caption contains every keyword",
    "keyword_clean": "context: clean captions that already contain every keyword (the floor of keyword_success)",
    **{f"bleu{n}_target": "lower is better for the model: BLEU-n of adversarial vs target" for n in (1, 2, 3, 4)},
    **{f"bleu{n}_original": "higher is better for the model: BLEU-n of adversarial vs clean" for n in (1, 2, 3, 4)},
    "linf_max": "budget used: largest L∞ perturbation",
    "linf_mean": "budget used: mean L∞ perturbation",
    "l2_mean": "budget used: mean L2 perturbation",
    "psnr_mean": "budget used: mean PSNR in dB of adversarial against clean images (higher is less visible)",
}
"""Metric name -> what it measures and its direction (for the model/defender); ``caption_metrics`` keys."""


def goal_reached(caption: str, *, target: str | None, keyword: str | None) -> bool:
    """Whether ``caption`` equals ``target`` or holds every word of ``keyword`` (after tokenization)."""
    words = tokenize(caption)
    if target is not None:
        return words == tokenize(target)
    return all(w in words for w in tokenize(keyword or ""))


def _words(caption: str) -> str:
    return " ".join(tokenize(caption))


def bleu(hypotheses: Sequence[str], references: Sequence[str], *, n: int) -> float:
    """Corpus BLEU-``n`` of ``hypotheses`` against one reference each (torchmetrics, uniform weights, no smoothing).

    Example:
        >>> round(bleu(["a large red star on grass"], ["a large red star on stripes"], n=1), 4)
        0.8333
    """
    if len(hypotheses) != len(references):
        raise ConfigError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    if not hypotheses:
        return float("nan")
    from torchmetrics.functional.text import bleu_score  # 3 s to import: every command registers the caption attacks

    return float(bleu_score([_words(h) for h in hypotheses], [[_words(r)] for r in references], n_gram=n))


def caption_metrics(
    clean_captions: Sequence[str],
    adv_captions: Sequence[str],
    original_captions: Sequence[str],
    *,
    target: str | None = None,
    keyword: str | None = None,
) -> dict[str, float]:
    """Score adversarial captions; every key and its direction is listed in :data:`CAPTION_METRICS`.

    Args:
        clean_captions: the captioner's captions of the clean images.
        adv_captions: its captions of the adversarial images.
        original_captions: the dataset's reference captions (ground truth).
        target: the caption the attack forces, if targeted: adds ``target_success``, ``target_clean``,
            ``bleu{1..4}_target``.
        keyword: one or more space-separated words the attack injects: adds ``keyword_success`` (all present)
            and ``keyword_clean``.

    BLEU values are corpus-level over the given captions, so call this once on a whole run's captions rather
    than averaging per-batch values.

    Example:
        >>> m = caption_metrics(["a red star"], ["a blue star"], ["a red star"], keyword="blue")
        >>> m["clean_exact"], m["adv_exact"], m["keyword_success"], m["changed"]
        (1.0, 0.0, 1.0, 1.0)
    """
    clean, adv, original = ([_words(c) for c in group] for group in (clean_captions, adv_captions, original_captions))
    if not len(clean) == len(adv) == len(original):
        raise ConfigError(f"{len(clean)} clean, {len(adv)} adversarial, {len(original)} references")
    if not adv:
        raise ConfigError("no captions to score")
    out = {
        "clean_exact": _mean(c == o for c, o in zip(clean, original, strict=True)),
        "adv_exact": _mean(a == o for a, o in zip(adv, original, strict=True)),
        "changed": _mean(a != c for a, c in zip(adv, clean, strict=True)),
    }
    out |= {f"bleu{n}_original": bleu(adv, clean, n=n) for n in (1, 2, 3, 4)}
    if target is not None:
        goal = _words(target)
        out |= {"target_success": _mean(a == goal for a in adv), "target_clean": _mean(c == goal for c in clean)}
        out |= {f"bleu{n}_target": bleu(adv, [goal] * len(adv), n=n) for n in (1, 2, 3, 4)}
    if keyword is not None:
        words = tokenize(keyword)
        if not words:
            raise ConfigError(f"keyword {keyword!r} has no word")
        out["keyword_success"] = _mean(all(w in a.split() for w in words) for a in adv)
        out["keyword_clean"] = _mean(all(w in c.split() for w in words) for c in clean)
    return out


def perturbation_metrics(x: Tensor, x_adv: Tensor) -> dict[str, float]:
    """L∞ (max, mean), mean L2 and mean PSNR (images in ``[0, 1]``; an unchanged image counts as 100 dB)."""
    linf = perturbation_norm(x, x_adv, Norm.LINF)
    l2 = perturbation_norm(x, x_adv, Norm.L2)
    mse = (x_adv - x).double().pow(2).flatten(1).mean(1)
    psnr = (-10 * mse.clamp_min(1e-10).log10()).clamp_max(100)
    return {
        "linf_max": float(linf.max()),
        "linf_mean": float(linf.mean()),
        "l2_mean": float(l2.mean()),
        "psnr_mean": float(psnr.mean()),
    }


def _mean(flags: Iterable[bool]) -> float:
    values = list(flags)
    return sum(values) / len(values)


def fisher_p_above(hits: int, n: int, floor_hits: int, floor_n: int) -> float:
    """One-sided Fisher exact p that ``hits / n`` exceeds ``floor_hits / floor_n`` only by chance (hypergeometric tail).

    Example:
        >>> round(fisher_p_above(6, 64, 2, 64), 3)
        0.137
    """
    total_hits, total = hits + floor_hits, n + floor_n
    if total_hits == 0:
        return 1.0
    tail = sum(math.comb(n, k) * math.comb(floor_n, total_hits - k) for k in range(hits, min(n, total_hits) + 1))
    return tail / math.comb(total, total_hits)
