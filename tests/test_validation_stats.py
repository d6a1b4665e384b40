"""The statistics of performance and drift (pure functions), checked against scikit-learn,
scipy and cases worked by hand; the drift verdict on synthetic windows."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from sonoshot.config import ValidationConfig
from sonoshot.db.validation import LabelledResult, ObservationRow
from sonoshot.validation import stats
from sonoshot.validation.drift import Reference, assess, week_start
from sonoshot.validation.performance import performance_report

RNG = np.random.default_rng(7)


def test_auroc_matches_scikit_learn_with_ties():
    labels = RNG.integers(0, 2, 200)
    scores = np.round(RNG.random(200) + 0.4 * labels, 1)  # many ties
    assert stats.auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))
    with pytest.raises(ValueError, match="normal and one abnormal"):
        stats.auroc(np.ones(3), np.ones(3))
    with pytest.raises(ValueError, match="same length"):
        stats.auroc(np.ones(3), np.ones(4))


def test_bootstrap_interval_covers_the_estimate_and_narrows_with_more_data():
    def interval(n):
        labels = np.repeat([0, 1], n)
        scores = RNG.normal(labels * 1.0, 1.0)
        return stats.auroc(labels, scores), stats.bootstrap_auroc(labels, scores, 500, seed=1)

    value, (low, high) = interval(30)
    assert low < value < high and 0.05 < high - low < 0.4
    _, (low_big, high_big) = interval(600)
    assert high_big - low_big < (high - low) / 3
    assert stats.bootstrap_auroc(np.array([0, 1]), np.array([0.1, 0.9]), 50) == (1.0, 1.0)


def test_confusion_rates_and_wilson_intervals():
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    predicted = np.array([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    c = stats.confusion(labels, predicted)
    assert (c.tp, c.fn, c.fp, c.tn) == (3, 1, 1, 5)
    assert c.sensitivity.value == 0.75 and c.specificity.value == pytest.approx(5 / 6)
    assert c.ppv.value == 0.75 and c.npv.value == pytest.approx(5 / 6)
    low, high = stats.wilson(3, 4)
    assert low == pytest.approx(0.3006, abs=1e-3) and high == pytest.approx(0.9544, abs=1e-3)  # published values
    assert stats.wilson(0, 0) is None and stats.confusion(np.zeros(2), np.zeros(2)).sensitivity.value is None


def test_threshold_for_a_target_sensitivity_is_the_most_specific_one_meeting_it():
    labels = np.array([0, 0, 0, 1, 1, 1, 1, 1])
    scores = np.array([0.1, 0.5, 0.7, 0.3, 0.6, 0.8, 0.9, 0.95])
    assert stats.threshold_for_sensitivity(labels, scores, 0.8) == 0.6  # 4 of 5 abnormal at >= 0.6
    assert stats.threshold_for_sensitivity(labels, scores, 1.0) == 0.3
    assert stats.threshold_for_sensitivity(labels, scores, 0.2) == 0.95
    with pytest.raises(ValueError, match="target"):
        stats.threshold_for_sensitivity(labels, scores, 0)


def test_ks_test_agrees_with_scipy_without_weights():
    a, b = RNG.normal(0, 1, 300), RNG.normal(0.3, 1, 200)
    d, p = stats.ks_test(a, b)
    reference = ks_2samp(a, b)
    assert d == pytest.approx(reference.statistic)
    assert p == pytest.approx(reference.pvalue, rel=0.25)


def test_prevalence_fit_explains_a_change_of_prevalence_but_not_of_shape():
    labels = np.repeat([0, 1], 200)
    reference = np.concatenate([RNG.beta(2, 8, 200), RNG.beta(8, 2, 200)])  # half abnormal
    site = np.concatenate([RNG.beta(2, 8, 60), RNG.beta(8, 2, 240)])  # 80 % abnormal, same shapes
    prevalence = stats.fit_prevalence(site, reference, labels)
    assert prevalence == pytest.approx(0.8, abs=0.06)
    weights = stats.reference_weights(labels, prevalence)
    assert stats.ks_test(site, reference, weights)[1] > 0.01
    assert stats.ks_test(site, reference)[1] < 1e-6  # the unweighted test calls the prevalence a drift
    shifted = np.clip(site * 0.5 + 0.25, 0, 1)  # scores squeezed towards the middle: no prevalence explains it
    weights = stats.reference_weights(labels, stats.fit_prevalence(shifted, reference, labels))
    assert stats.ks_test(shifted, reference, weights)[1] < 1e-6
    assert stats.psi(shifted, reference, weights) > 0.25


def test_psi_of_a_sample_against_itself_is_small_and_against_a_shift_large():
    base = RNG.normal(0, 1, 2000)
    assert stats.psi(RNG.normal(0, 1, 2000), base) < 0.02
    assert stats.psi(RNG.normal(1, 1, 2000), base) > 0.5
    assert stats.effective_size(np.full(8, 0.125)) == pytest.approx(8)
    assert stats.relative_shift(np.full(5, 110.0), np.full(5, 100.0)) == pytest.approx(0.1)


NOW = datetime(2026, 3, 4, 12, tzinfo=timezone.utc)
LIMITS = ValidationConfig()


def _rows(scores, brightness, side=512, quarantined=0):
    rows = [ObservationRow(1, f"1.2.3.{i}", NOW - timedelta(hours=1), False, None, float(s), side, side, float(b))
            for i, (s, b) in enumerate(zip(scores, brightness))]
    return rows + [ObservationRow(1, "1.2.4", NOW, True, "verifier: ocr: 1 PHI string match(es)", None, None, None,
                                  None)] * quarantined


def _reference():
    labels = np.repeat([0, 1], 16)
    scores = np.concatenate([RNG.beta(2, 6, 16), RNG.beta(6, 2, 16)])
    return Reference(scores, labels, RNG.normal(70, 10, 32), np.full(32, 512.0))


def test_an_unchanged_scanner_is_ok_and_a_changed_one_drifts():
    reference = _reference()
    same = _rows(np.concatenate([RNG.beta(2, 6, 10), RNG.beta(6, 2, 30)]), RNG.normal(70, 10, 40))
    window = assess(same, 1, NOW - timedelta(days=7), NOW, reference, LIMITS)
    assert window.verdict == "ok" and window.reasons == () and 0.5 < window.prevalence < 0.95
    brighter = _rows(np.concatenate([RNG.beta(2, 6, 10), RNG.beta(6, 2, 30)]), RNG.normal(140, 10, 40), side=384)
    window = assess(brighter, 1, NOW - timedelta(days=7), NOW, reference, LIMITS)
    assert window.flagged and set(window.reasons) == {"brightness", "size"}
    assert window.brightness.shift > 0.5 and window.size.shift == pytest.approx(-0.25)


def test_quarantine_share_too_few_and_no_reference():
    reference = _rows(RNG.random(30), RNG.normal(70, 10, 30), quarantined=10)
    window = assess(reference, 1, NOW - timedelta(days=7), NOW, _reference(), LIMITS)
    assert "quarantine" in window.reasons and window.quarantine_share == 0.25
    assert window.quarantine_reasons == {"verifier": 10}
    few = assess(_rows(RNG.random(5), RNG.normal(70, 1, 5)), 1, NOW, NOW, _reference(), LIMITS)
    assert few.verdict == "too-few" and few.scores is None
    assert assess(_rows(RNG.random(30), RNG.normal(70, 1, 30)), 1, NOW, NOW, None, LIMITS).verdict == "no-reference"
    assert Reference.from_validation({"scores": [0.1], "labels": [0]}) is None


def test_week_start_is_monday_utc():
    assert week_start(datetime(2026, 3, 4, 23, 59, tzinfo=timezone.utc)) == datetime(2026, 3, 2, tzinfo=timezone.utc)


def test_performance_report_overall_and_by_group():
    rows = [LabelledResult(f"1.2.{i}", NOW, score, 0.5, "abnormal" if score >= 0.5 else "normal", "ab" * 32,
                           label, scanner, "BREAST")
            for i, (score, label, scanner) in enumerate([
                (0.9, "abnormal", "A"), (0.7, "abnormal", "A"), (0.4, "abnormal", "B"), (0.6, "normal", "B"),
                (0.2, "normal", "A"), (0.1, "normal", "B")])]
    overall, by_a, by_b = performance_report(rows, "scanner", 0.9, 200)
    assert (overall.group, overall.studies, overall.abnormal, overall.normal) == ("all", 6, 3, 3)
    assert overall.auroc == pytest.approx(roc_auc_score([r.label == "abnormal" for r in rows],
                                                        [r.score for r in rows]))
    assert overall.at_threshold.sensitivity.value == pytest.approx(2 / 3)
    assert overall.target_threshold == 0.4 and overall.at_target.sensitivity.value == 1.0
    assert (by_a.group, by_a.studies, by_b.group) == ("A", 3, "B")
    assert performance_report([], None, 0.9, 100) == []
