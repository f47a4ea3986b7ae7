"""edgecxr.metrics against numbers worked out by hand on tiny arrays."""

import json
import subprocess
import sys

import numpy as np
import pytest

from edgecxr.errors import DataError
from edgecxr.metrics import (
    agreement,
    auroc,
    calibration,
    confusion_matrix,
    evaluate_predictions,
    f1_score,
    format_metrics,
    wilson_ci,
)

NAMES = ["normal", "covid19", "bacterial", "viral"]


def probs_for(pred, conf, n_classes=4):
    """Rows whose top-1 class is ``pred`` with probability ``conf``, the rest shared equally."""
    rows = np.full((len(pred), n_classes), 0.0)
    for i, (c, p) in enumerate(zip(pred, conf)):
        rows[i] = (1 - p) / (n_classes - 1)
        rows[i, c] = p
    return rows


# Eight labelled images, two per class; five right.
#   true:      n  n  c  c  b  b  v  v
#   predicted: n  c  c  c  b  v  v  n
Y8 = [0, 0, 1, 1, 2, 2, 3, 3]
PRED8 = [0, 1, 1, 1, 2, 3, 3, 0]
# Confidences sit in eight different ECE bins, away from bin edges.
CONF8 = [0.9, 0.58, 0.78, 0.7, 0.95, 0.5, 0.65, 0.42]


@pytest.fixture
def eight():
    return evaluate_predictions(Y8, probs_for(PRED8, CONF8), NAMES)


def test_wilson_matches_published_values():
    lo, hi = wilson_ci(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    # 0/10: lower bound exactly 0, upper z^2 / (n + z^2)
    lo, hi = wilson_ci(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(1.96**2 / (10 + 1.96**2), abs=1e-9)
    lo, hi = wilson_ci(10, 10)
    assert hi == 1.0 and lo == pytest.approx(1 - 1.96**2 / (10 + 1.96**2), abs=1e-9)
    assert wilson_ci(0, 0) == (None, None)
    with pytest.raises(ValueError):
        wilson_ci(3, 2)


def test_confusion_matrix_counts_and_skips_partial_rows():
    cm = confusion_matrix(Y8 + [-1, -1], PRED8 + [1, 2], 4)
    expected = np.array([[1, 1, 0, 0], [0, 2, 0, 0], [0, 0, 1, 1], [1, 0, 0, 1]])
    np.testing.assert_array_equal(cm, expected)
    with pytest.raises(DataError):
        confusion_matrix([0, 4], [0, 1], 4)


def test_per_class_rates_by_hand(eight):
    pc = eight["per_class"]
    # (sensitivity, specificity, precision, F1) from the confusion matrix above
    expected = {
        "normal": (1 / 2, 5 / 6, 1 / 2, 2 / 4),
        "covid19": (2 / 2, 5 / 6, 2 / 3, 4 / 5),
        "bacterial": (1 / 2, 6 / 6, 1 / 1, 2 / 3),
        "viral": (1 / 2, 5 / 6, 1 / 2, 2 / 4),
    }
    for name, (sens, spec, prec, f1) in expected.items():
        assert pc[name]["sensitivity"]["value"] == pytest.approx(sens, abs=1e-6)
        assert pc[name]["specificity"]["value"] == pytest.approx(spec, abs=1e-6)
        assert pc[name]["precision"]["value"] == pytest.approx(prec, abs=1e-6)
        assert pc[name]["f1"]["value"] == pytest.approx(f1, abs=1e-6)
    assert (pc["covid19"]["tp"], pc["covid19"]["fp"], pc["covid19"]["fn"], pc["covid19"]["tn"]) == (
        2, 1, 0, 5)
    assert pc["normal"]["specificity"]["k"] == 5 and pc["normal"]["specificity"]["n"] == 6
    # accuracy 5/8 with Wilson (0.3057, 0.8632)
    acc = eight["accuracy"]
    assert (acc["k"], acc["n"], acc["value"]) == (5, 8, 0.625)
    assert acc["ci"] == pytest.approx([0.3057, 0.8632], abs=1e-4)
    assert eight["macro"]["sensitivity"] == pytest.approx(0.625, abs=1e-6)
    assert eight["macro"]["f1"] == pytest.approx((0.5 + 0.8 + 2 / 3 + 0.5) / 4, abs=1e-6)
    assert eight["confusion_matrix"]["matrix"][3] == [1, 0, 0, 1]


def test_f1_interval_is_wilson_of_jaccard_mapped_to_f1():
    # tp=fp=fn=1: J = 1/3 with Wilson (0.06149, 0.79235); F1 = 2J/(1+J)
    f1 = f1_score(1, 1, 1)
    assert f1["value"] == 0.5
    assert f1["ci"] == pytest.approx([0.11586, 0.88414], abs=1e-4)
    assert f1_score(0, 0, 0)["value"] is None


def test_auroc_counts_ties_as_half():
    # positives 0.8, 0.5; negatives 0.5, 0.2, 0.1 -> pairs won: 3 + (0.5 + 2) = 5.5 of 6
    positive = [True, True, False, False, False]
    scores = [0.8, 0.5, 0.5, 0.2, 0.1]
    assert auroc(positive, scores) == pytest.approx(5.5 / 6)
    assert auroc([True, False, True, False], [0.3, 0.3, 0.3, 0.3]) == 0.5
    assert auroc([False, False], [0.1, 0.2]) is None


def test_one_vs_rest_auroc_in_evaluation(eight):
    # normal scores: positives 0.9 and 0.14; the latter beats 4 of the 6 negatives -> 10/12
    assert eight["per_class"]["normal"]["auroc"] == pytest.approx(10 / 12, abs=1e-6)
    assert eight["covid_vs_rest"]["auroc"] == pytest.approx(1.0)


def test_ece_by_hand():
    # four at 0.9 with 3 right (gap 0.15), two at 0.55 with 1 right (gap 0.05)
    cal = calibration([0.9, 0.9, 0.9, 0.9, 0.55, 0.55], [1, 1, 1, 0, 1, 0])
    assert cal["ece"] == pytest.approx(4 / 6 * 0.15 + 2 / 6 * 0.05)
    counts = [b["count"] for b in cal["bins"]]
    assert len(counts) == 15 and counts[13] == 4 and counts[8] == 2 and sum(counts) == 6
    assert cal["bins"][13]["accuracy"] == 0.75
    assert cal["bins"][0]["accuracy"] is None
    # edges: 1.0 lands in the last bin, 0.0 in the first
    edge = calibration([1.0, 0.0], [1, 0])
    assert edge["bins"][14]["count"] == 1 and edge["bins"][0]["count"] == 1


def test_evaluation_calibrates_top1_confidence():
    probs = [[0.9, 0.1]] * 4 + [[0.55, 0.45]] * 2
    m = evaluate_predictions([0, 0, 0, 1, 0, 1], probs, ["normal", "covid19"])
    assert m["calibration"]["ece"] == pytest.approx(0.116667, abs=1e-6)


def test_partial_label_rows_scored_apart(eight):
    y = Y8 + [-1, -1, -1, -1]
    pred = PRED8 + [1, 2, 3, 0]  # called covid19, bacterial, viral, normal
    partial = [""] * 8 + ["pneumonia_unspecified"] * 4
    m = evaluate_predictions(y, probs_for(pred, CONF8 + [0.7] * 4), NAMES, partial_labels=partial)
    assert (m["n"], m["n_labelled"], m["n_partial"]) == (12, 8, 4)
    assert m["accuracy"] == eight["accuracy"]
    assert sum(map(sum, m["confusion_matrix"]["matrix"])) == 8
    pu = m["partial_labels"]["pneumonia_unspecified"]
    assert pu["n"] == 4
    assert (pu["not_called_covid19"]["k"], pu["not_called_covid19"]["n"]) == (3, 4)
    assert pu["called_allowed"]["value"] == 0.5 and pu["allowed"] == ["bacterial", "viral"]
    assert pu["not_called_covid19"]["ci"] == pytest.approx(list(wilson_ci(3, 4)), abs=1e-6)
    assert pu["predicted"] == {"normal": 1, "covid19": 1, "bacterial": 1, "viral": 1}
    # without names the rows still get counted, under a neutral name
    unnamed = evaluate_predictions(y, probs_for(pred, CONF8 + [0.7] * 4), NAMES)
    assert unnamed["partial_labels"]["unspecified"]["n"] == 4


def test_breakdown_exposes_source_shortcut():
    # Pediatric normals are fine; two of three adult normals are called COVID-19.
    y = [0, 0, 0, 1, 1, 0, 0, 0, -1, -1]
    pred = [0, 0, 0, 1, 1, 1, 1, 0, 1, 2]
    sources = ["kermany"] * 3 + ["ieee8023"] * 2 + ["adult_normal"] * 3 + ["adult_pneu"] * 2
    groups = ["pediatric"] * 3 + ["adult"] * 7
    m = evaluate_predictions(y, probs_for(pred, [0.8] * 10), NAMES, sources=sources,
                             groups=groups, partial_labels=["pneumonia_unspecified"] * 10)
    assert list(m["by_source"]) == ["adult_normal", "adult_pneu", "ieee8023", "kermany"]
    adult_normal = m["by_source"]["adult_normal"]
    assert adult_normal["accuracy"]["value"] == pytest.approx(1 / 3, abs=1e-6)
    shortcut = adult_normal["non_covid_not_called_covid19"]
    assert (shortcut["k"], shortcut["n"]) == (1, 3)
    assert m["by_source"]["kermany"]["non_covid_not_called_covid19"]["value"] == 1.0
    # only COVID images: no non-COVID rate to give
    assert m["by_source"]["ieee8023"]["non_covid_not_called_covid19"]["n"] == 0
    assert m["by_source"]["ieee8023"]["non_covid_not_called_covid19"]["value"] is None
    pneu = m["by_source"]["adult_pneu"]
    assert pneu["n_labelled"] == 0 and pneu["accuracy"]["value"] is None
    assert pneu["partial_labels"]["pneumonia_unspecified"]["not_called_covid19"]["k"] == 1
    adult = m["by_group"]["adult"]
    assert (adult["n"], adult["n_labelled"]) == (7, 5)
    assert adult["non_covid_not_called_covid19"]["k"] == 1
    assert adult["sensitivity"]["covid19"]["value"] == 1.0
    assert m["by_group"]["pediatric"]["accuracy"]["value"] == 1.0
    text = format_metrics(m)
    assert "adult_normal" in text and "0.333 (" in text


def test_absent_class_is_null_not_nan():
    # no viral images and none predicted viral
    m = evaluate_predictions([0, 1, 2, 0], probs_for([0, 1, 2, 1], [0.7] * 4), NAMES)
    viral = m["per_class"]["viral"]
    assert viral["sensitivity"] == {"value": None, "k": 0, "n": 0, "ci": [None, None]}
    assert viral["precision"]["value"] is None and viral["f1"]["value"] is None
    assert viral["auroc"] is None
    assert viral["specificity"]["value"] == 1.0
    assert m["macro"]["undefined"]["sensitivity"] == ["viral"]
    assert m["macro"]["sensitivity"] == pytest.approx((0.5 + 1 + 1) / 3, abs=1e-6)
    json.dumps(m, allow_nan=False)
    assert "viral" in format_metrics(m)


def test_only_partial_rows_does_not_crash():
    m = evaluate_predictions([-1, -1], probs_for([1, 2], [0.6, 0.6]), NAMES)
    assert m["accuracy"]["value"] is None and m["calibration"]["ece"] is None
    assert m["partial_labels"]["unspecified"]["not_called_covid19"]["k"] == 1
    json.dumps(m, allow_nan=False)
    format_metrics(m)


def _plain_types(obj):
    if isinstance(obj, dict):
        return all(isinstance(k, str) and _plain_types(v) for k, v in obj.items())
    if isinstance(obj, list):
        return all(_plain_types(v) for v in obj)
    return obj is None or type(obj) in (str, int, float, bool)


def test_result_is_plain_json():
    m = evaluate_predictions(np.array(Y8, dtype=np.int32), probs_for(PRED8, CONF8).astype(np.float32),
                             NAMES, sources=np.array(["a", "b"] * 4), groups=["adult"] * 8)
    assert _plain_types(m)
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert set(m) == {"schema", "class_names", "n", "n_labelled", "n_partial", "accuracy",
                      "per_class", "macro", "confusion_matrix", "covid_vs_rest", "calibration",
                      "partial_labels", "by_source", "by_group", "called_covid19_by_source", "worst_source"}


def test_partial_labels_follow_their_mapping_and_count_per_source():
    # two tuberculosis films and one custom partial label "abnormal" (anything but normal)
    y = [0, 0, 1, -1, -1, -1]
    pred = [0, 1, 1, 2, 1, 1]  # normal ok, normal called covid, covid ok, tb ok, tb called covid, abnormal covid
    partial = ["", "", "", "tuberculosis", "tuberculosis", "abnormal"]
    sources = ["nih", "nih", "ieee8023", "tbx11k", "tbx11k", "other"]
    m = evaluate_predictions(y, probs_for(pred, [0.9] * 6), NAMES, sources=sources,
                             groups=["adult"] * 6, partial_labels=partial,
                             partial_allowed={"tuberculosis": ["bacterial", "viral"],
                                              "abnormal": ["covid19", "bacterial", "viral"]})
    tb = m["partial_labels"]["tuberculosis"]
    assert (tb["called_allowed"]["k"], tb["called_allowed"]["n"]) == (1, 2)
    assert m["partial_labels"]["abnormal"]["called_allowed"]["value"] == 1.0
    # label-consistent rate per source counts the partial rows by their mapping
    assert m["by_source"]["tbx11k"]["label_consistent"]["value"] == 0.5
    assert m["by_source"]["other"]["label_consistent"]["value"] == 1.0
    called = m["called_covid19_by_source"]
    assert set(called) == {"nih", "tbx11k", "other"}  # ieee8023 has no non-COVID film here
    assert (called["nih"]["called_covid19"]["k"], called["nih"]["called_covid19"]["n"]) == (1, 2)
    assert called["tbx11k"]["n_partial"] == 2
    assert called["nih"]["called_covid19"]["ci"] == pytest.approx(list(wilson_ci(1, 2)), abs=1e-6)


def test_worst_source_skips_small_sources():
    from edgecxr.metrics import worst_source

    rate = lambda k, n: {"value": k / n, "k": k, "n": n, "ci": list(wilson_ci(k, n))}  # noqa: E731
    by_source = {"big": {"n": 40, "label_consistent": rate(30, 40)},
                 "tiny": {"n": 3, "label_consistent": rate(0, 3)},
                 "good": {"n": 20, "label_consistent": rate(19, 20)}}
    assert worst_source(by_source)["source"] == "big"
    assert worst_source(by_source, min_n=1)["source"] == "tiny"
    assert worst_source({"tiny": by_source["tiny"]}) is None


@pytest.mark.parametrize(
    "y, probs, match",
    [
        (Y8, np.full((8, 3), 1 / 3), "shape"),
        (Y8[:7], probs_for(PRED8, CONF8), "7 labels for 8"),
        ([0, 4], probs_for([0, 1], [0.9, 0.9]), "outside 0..3"),
        ([0, 1], [[np.nan, 0, 0, 0], [1, 0, 0, 0]], "NaN"),
        ([0, 1], [[5.0, -1, 0, 0], [1, 0, 0, 0]], "0..1"),
        ([], np.zeros((0, 4)), "no predictions"),
    ],
)
def test_bad_input_is_a_data_error(y, probs, match):
    with pytest.raises(DataError, match=match):
        evaluate_predictions(y, probs, NAMES)


def test_agreement_overall_and_per_group():
    a = probs_for([0, 1, 2, 3], [0.9] * 4)
    b = probs_for([0, 1, 2, 0], [0.8] * 4)
    r = agreement(a, b, groups=["adult", "adult", "pediatric", "pediatric"])
    assert (r["agreement"]["k"], r["agreement"]["n"]) == (3, 4)
    assert r["by_group"]["adult"]["value"] == 1.0
    assert r["by_group"]["pediatric"]["value"] == 0.5
    assert r["max_abs_diff"] == pytest.approx(0.9 - 0.2 / 3)
    assert agreement(a, a)["agreement"]["value"] == 1.0 and agreement(a, a)["by_group"] == {}
    with pytest.raises(DataError):
        agreement(a, b[:3])


def test_format_metrics_shows_the_key_numbers(eight):
    text = format_metrics(eight)
    assert "accuracy 0.625 (0.306-0.863) on 8 labelled images" in text
    assert "0.800 (0.344-0.968)" in text  # covid19 F1 with its interval
    lines = text.splitlines()
    header = next(line for line in lines if "true \\ predicted" in line)
    assert header.split()[-4:] == NAMES
    viral_row = next(line for line in lines if line.strip().startswith("viral") and "(" not in line)
    assert viral_row.split()[1:] == ["1", "0", "0", "1"]
    assert "COVID-19 vs rest: sensitivity 1.000" in text
    # one image per bin: ECE = mean |correct - confidence|
    # = (0.1 + 0.58 + 0.22 + 0.3 + 0.05 + 0.5 + 0.35 + 0.42) / 8
    assert "ECE 0.315" in text
    assert eight["calibration"]["ece"] == pytest.approx(2.52 / 8, abs=1e-6)


def test_metrics_module_imports_no_tensorflow():
    code = ("import sys, edgecxr.metrics; "
            "bad = [m for m in ('tensorflow', 'tf_keras', 'sklearn', 'matplotlib') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_useless_reasons_name_a_class_never_predicted_and_chance_macro_sensitivity(eight):
    from edgecxr.metrics import useless_reasons

    assert useless_reasons(eight) == []  # every class called, macro sensitivity 0.625
    one_class = evaluate_predictions(Y8, probs_for([1] * 8, [0.9] * 8), NAMES)
    assert useless_reasons(one_class) == [
        "it never predicts normal, bacterial, viral on 8 validation images",
        "its macro sensitivity 0.250 is at chance (1/4 = 0.250, +0.05 margin)",
    ]
    # every class is called, but no better than chance: right on 3 of 8, one per class at most
    shuffled = evaluate_predictions(Y8, probs_for([1, 0, 2, 3, 0, 1, 2, 3], [0.9] * 8), NAMES)
    assert shuffled["macro"]["sensitivity"] == pytest.approx(0.25)
    assert useless_reasons(shuffled) == ["its macro sensitivity 0.250 is at chance (1/4 = 0.250, +0.05 margin)"]
    # a class called only on partial-label images is still predicted
    partial = evaluate_predictions(Y8 + [-1], probs_for(PRED8 + [2], CONF8 + [0.9]), NAMES,
                                   partial_labels=[""] * 8 + ["pneumonia_unspecified"])
    assert useless_reasons(partial) == []
    no_bacterial = [0, 1, 1, 1, 0, 3, 3, 0]
    assert useless_reasons(evaluate_predictions(Y8, probs_for(no_bacterial, CONF8), NAMES)) == [
        "it never predicts bacterial on 8 validation images"]
    assert useless_reasons(evaluate_predictions(Y8 + [-1], probs_for(no_bacterial + [2], CONF8 + [0.9]), NAMES,
                                                partial_labels=[""] * 8 + ["pneumonia_unspecified"])) == []
