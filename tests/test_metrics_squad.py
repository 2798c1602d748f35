"""SQuAD EM/F1 against hand-computed values (the official formula)."""

import pytest

from sparsebert.metrics import exact_match_score, f1_score, normalize_answer, squad_v1_metrics, squad_v2_metrics


def test_normalization_drops_case_punctuation_articles_and_extra_spaces():
    assert normalize_answer("The  Eiffel-Tower, in PARIS!") == "eiffeltower in paris"
    assert normalize_answer("an apple a day") == "apple day"
    assert normalize_answer("theatre") == "theatre"  # 'the' only as a word


def test_exact_match_after_normalization():
    assert exact_match_score("the Denver Broncos", "Denver Broncos.") == 1.0
    assert exact_match_score("Denver", "Denver Broncos") == 0.0


def test_f1_partial_overlap_by_hand():
    # "big red dog" vs "red dog": 2 common tokens, precision 2/3, recall 1 -> F1 = 0.8
    assert f1_score("the big red dog", "red dog") == pytest.approx(0.8)
    # pred [b], gold [b, c]: precision 1, recall 1/2
    assert f1_score("b", "b c") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert f1_score("x y", "z") == 0.0


def test_v1_takes_best_gold_and_averages_as_percentages():
    predictions = {"q1": "Denver Broncos", "q2": "in 1990", "q3": "wrong"}
    references = {"q1": ["Broncos", "Denver Broncos"], "q2": ["1990", "the year 1990"], "q3": ["right"]}
    result = squad_v1_metrics(predictions, references)
    # q1 exact on its second gold; q2: F1 vs "1990" = 2*(1/2*1)/(1.5) = 2/3, vs "year 1990" = 1/2 -> 2/3
    assert result["exact_match"] == pytest.approx(100 / 3)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 0) / 3)


def test_v1_refuses_missing_predictions():
    with pytest.raises(ValueError, match="no prediction"):
        squad_v1_metrics({}, {"q1": ["a"]})


def test_v2_has_answer_and_no_answer_splits():
    predictions = {"a": "blue", "b": "", "c": "something", "d": ""}
    references = {"a": ["blue"], "b": [], "c": [], "d": ["green"]}
    result = squad_v2_metrics(predictions, references)
    assert result["HasAns_total"] == 2 and result["NoAns_total"] == 2
    assert result["HasAns_exact"] == pytest.approx(50.0)  # a right, d abstained wrongly
    assert result["NoAns_exact"] == pytest.approx(50.0)  # b abstained rightly, c answered
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["f1"] == pytest.approx(50.0)


def test_v2_best_threshold_sweeps_no_answer_scores():
    # answering only the questions whose null score is below 0.5 gets all four right
    predictions = {"a": "blue", "b": "red", "c": "x", "d": "y"}
    references = {"a": ["blue"], "b": ["red"], "c": [], "d": []}
    null_scores = {"a": 0.1, "b": 0.2, "c": 0.8, "d": 0.9}
    result = squad_v2_metrics(predictions, references, null_scores)
    assert result["exact_match"] == pytest.approx(50.0)
    assert result["best_exact"] == pytest.approx(100.0)
    assert result["best_exact_thresh"] == pytest.approx(0.2)


def test_answers_that_normalize_to_nothing_score_as_each_official_script_does():
    # the official dev file has golds that are just "." (e.g. 5725bad5271a42140099d0c1): a prediction "the"
    # normalizes to nothing as well. v1.1's F1 finds no common token (0), its EM compares "" with "" (1);
    # v2.0 counts an agreed empty answer as a match (1), an empty side against a real answer as 0.
    assert f1_score("the", ".") == 0.0 and exact_match_score("the", ".") == 1.0
    assert squad_v1_metrics({"q": "the"}, {"q": ["."]}) == {"exact_match": 100.0, "f1": 0.0}
    assert f1_score("the", ".", version=2) == 1.0
    assert f1_score("", "blue", version=2) == 0.0 and f1_score("blue", "", version=2) == 0.0
    assert f1_score("", "blue") == 0.0
