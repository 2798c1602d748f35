"""Evaluation metrics computed locally (the `evaluate` library would fetch them from the Hub).

SQuAD v1.1 and v2.0 follow the official evaluation scripts; GLUE follows the task definitions.
"""

import collections
import re
import string

import numpy as np

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lower-case, drop punctuation and the articles a/an/the, collapse whitespace (official SQuAD rule)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match_score(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str, version: int = 1) -> float:
    """Token-overlap F1 between normalized answers, as each official script computes it.

    They differ only where a side normalizes to nothing ("the", "."): v1.1 finds no common token and scores 0,
    v2.0 scores 1 when both are empty (a no-answer agreed) and 0 when one is.
    """
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if version == 2 and (not pred_tokens or not gold_tokens):
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_tokens)
    recall = num_same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _best_over_golds(score_fn, prediction, golds):
    return max(score_fn(prediction, gold) for gold in golds)


def squad_v1_metrics(predictions: dict, references: dict) -> dict:
    """SQuAD v1.1: `predictions` maps id -> answer text, `references` maps id -> list of gold texts.

    Each question scores its best match over the gold answers; results are percentages.
    """
    missing = [qid for qid in references if qid not in predictions]
    if missing:
        raise ValueError(f"{len(missing)} questions have no prediction, e.g. {missing[0]!r}")
    exact = [_best_over_golds(exact_match_score, predictions[q], golds) for q, golds in references.items()]
    f1 = [_best_over_golds(f1_score, predictions[q], golds) for q, golds in references.items()]
    return {"exact_match": 100.0 * np.mean(exact), "f1": 100.0 * np.mean(f1)}


def squad_v2_metrics(predictions: dict, references: dict, no_answer_probability: dict | None = None) -> dict:
    """SQuAD v2.0 with HasAns/NoAns splits and the best no-answer thresholds, as the official script.

    `references[id]` is the list of gold texts, empty for unanswerable questions (scored against "").
    `no_answer_probability[id]` is the score that the question has no answer (for the best_* thresholds).
    """
    exact, f1 = {}, {}
    for qid, golds in references.items():
        golds = [g for g in golds if normalize_answer(g)] or [""]
        exact[qid] = _best_over_golds(exact_match_score, predictions[qid], golds)
        f1[qid] = max(f1_score(predictions[qid], gold, version=2) for gold in golds)
    has_answer = {qid: bool([g for g in golds if normalize_answer(g)]) for qid, golds in references.items()}
    no_answer_probability = no_answer_probability or {qid: 0.0 for qid in references}

    def mean_over(scores, ids):
        return 100.0 * sum(scores[q] for q in ids) / len(ids)

    result = {"exact_match": mean_over(exact, references), "f1": mean_over(f1, references), "total": len(references)}
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        ids = [q for q in references if has_answer[q] == wanted]
        if ids:
            result.update({f"{prefix}_exact": mean_over(exact, ids), f"{prefix}_f1": mean_over(f1, ids),
                           f"{prefix}_total": len(ids)})
    for name, scores in (("exact", exact), ("f1", f1)):
        best, threshold = _best_threshold(scores, no_answer_probability, predictions, has_answer)
        result[f"best_{name}"] = best
        result[f"best_{name}_thresh"] = threshold
    return result


def _best_threshold(scores, no_answer_probability, predictions, has_answer):
    """Sweep the no-answer threshold: questions above it answer "" instead of the prediction."""
    current = best = sum(not has for has in has_answer.values())  # everything predicted as no-answer
    best_threshold = 0.0
    for qid in sorted(no_answer_probability, key=no_answer_probability.get):
        if qid not in scores:
            continue
        if has_answer[qid]:
            diff = scores[qid]
        elif predictions[qid]:
            diff = -1
        else:
            diff = 0
        current += diff
        if current > best:
            best = current
            best_threshold = no_answer_probability[qid]
    return 100.0 * best / len(scores), best_threshold


# --------------------------------------------------------------------------------------------------
# GLUE
# --------------------------------------------------------------------------------------------------


def accuracy(predictions, labels) -> float:
    return float(np.mean(np.asarray(predictions) == np.asarray(labels)))


def binary_f1(predictions, labels) -> float:
    """F1 of the positive class (label 1), as GLUE scores MRPC and QQP."""
    from sklearn.metrics import f1_score as sklearn_f1

    return float(sklearn_f1(labels, predictions, zero_division=0.0))


def matthews_correlation(predictions, labels) -> float:
    """Matthews correlation (CoLA); 0 when a row or column of the confusion matrix is empty."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def pearson(predictions, labels) -> float:
    from scipy.stats import pearsonr

    return float(pearsonr(np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float))[0])


def spearman(predictions, labels) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(predictions, labels)[0])


GLUE_METRICS = {
    "accuracy": lambda pred, gold: {"accuracy": accuracy(pred, gold)},
    "f1_accuracy": lambda pred, gold: {"accuracy": accuracy(pred, gold), "f1": binary_f1(pred, gold)},
    "matthews": lambda pred, gold: {"matthews_correlation": matthews_correlation(pred, gold)},
    "correlation": lambda pred, gold: {"pearson": pearson(pred, gold), "spearmanr": spearman(pred, gold)},
}


def glue_metrics(kind: str, predictions, labels) -> dict:
    """`predictions` are class ids (or scores for the correlation metrics of STS-B)."""
    return GLUE_METRICS[kind](predictions, labels)
