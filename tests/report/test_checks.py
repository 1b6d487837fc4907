"""The preconditions checked before every verdict, on hand-made per-seed tables (maskprune.report.checks)."""

from __future__ import annotations

import math

import pytest

from maskprune.report.checks import (
    Check,
    Collapse,
    Curve,
    above_chance,
    clears_floor,
    gmacs_matched,
    heterogeneity_falls,
    keep_ratio,
    not_collapsed,
    plateaued,
    rauc_defined,
    teacher_gap,
    teacher_larger,
    testable,
)


def test_teacher_gap_fails_on_the_seed_where_the_student_wins() -> None:
    check = teacher_gap({0: 0.8505, 1: 0.88}, {0: 0.8646, 1: 0.85, 2: 0.90}, minimum=0.02)
    assert check == Check(
        "teacher stronger than the no-KD student",
        False,
        "seed 0: teacher 85.05 vs student 86.46 (-1.41 points, needs >= +2.00)",
    )


def test_teacher_gap_passes_and_shows_the_worst_seed() -> None:
    check = teacher_gap({0: 0.88, 1: 0.90}, {0: 0.85, 1: 0.86}, minimum=0.02)
    assert check.passed
    assert check.detail == "seed 0: teacher 88.00 vs student 85.00 (+3.00 points, needs >= +2.00)"


def test_teacher_gap_names_how_the_teacher_is_measured_and_against_whom() -> None:
    # claim C: the self-supervised teacher's linear probe against the student trained from scratch with labels
    check = teacher_gap(
        {0: 0.8525, 1: 0.8640},
        {0: 0.8474, 1: 0.8390},
        minimum=0.02,
        view="in a linear probe",
        student_name="the scratch ViT student",
    )
    assert check == Check(
        "teacher in a linear probe stronger than the scratch ViT student",
        False,
        "seed 0: teacher in a linear probe 85.25 vs student 84.74 (+0.51 points, needs >= +2.00)",
    )


def test_teacher_gap_boundary_and_no_data() -> None:
    assert teacher_gap({0: 0.3}, {0: 0.1}, minimum=0.2).passed  # 0.3 - 0.1 < 0.2 in floats, yet exactly at the bar
    assert teacher_gap({0: 0.3}, {0: 0.1001}, minimum=0.2).passed is False
    assert teacher_gap({0: 0.9}, {1: 0.8}, minimum=0.02) == Check(
        "teacher stronger than the no-KD student", False, "not measured"
    )


def test_teacher_larger_fails_on_the_seed_where_the_student_is_as_large() -> None:
    check = teacher_larger({0: 2.78, 1: 1.20, 2: math.nan}, {0: 1.20, 1: 1.20, 2: 1.20, 3: 0.5})
    assert check == Check(
        "the teacher is larger than the student",
        False,
        "seed 1: teacher 1.20 M vs student 1.20 M parameters; seed 2: teacher nan M vs student 1.20 M parameters",
    )
    passing = teacher_larger({0: 2.78, 1: 2.78}, {0: 1.20, 1: 2.00})
    assert passing == Check(
        "the teacher is larger than the student", True, "seed 1: teacher 2.78 M vs student 2.00 M parameters"
    )
    assert teacher_larger({0: 2.78}, {1: 1.20}).detail == "not measured"


def test_rauc_defined_names_each_seed_where_the_baseline_did_not_improve() -> None:
    check = rauc_defined({"mae": {0: -0.25, 1: math.nan}, "simmim": {0: 0.1, 2: math.nan}})
    assert check == Check(
        "RAUC is defined (the baseline's probe improves over the range)",
        False,
        "undefined for mae seed 1, simmim seed 2",
    )
    assert rauc_defined({"mae": {0: -0.25, 1: 0.0}}).detail == "defined on every seed"
    assert rauc_defined({"mae": {}}).detail == "not measured"


def _curve(*val: float) -> Curve:
    return Curve(list(val), [1e-3 * 0.5**i for i in range(len(val))])


def test_plateaued_reads_a_slope_over_the_last_quarter_on_every_seed() -> None:
    # 8 epochs: the last quarter is the last 3. seed 0 gains 0.1 point an epoch there; seed 1 gains
    # nothing in its last epoch (the end of a cosine schedule) but 1 point an epoch over the quarter
    flat = _curve(0.70, 0.78, 0.81, 0.83, 0.84, 0.845, 0.846, 0.847)
    rising = _curve(0.70, 0.74, 0.76, 0.78, 0.80, 0.82, 0.84, 0.84)
    check = plateaued({"kd": {0: flat, 1: rising}, "nokd": {0: _curve(0.8, 0.81)}}, bound=0.005)
    assert check == Check(
        "trained arms have plateaued",
        False,
        "arm kd seed 1: +1.00 points an epoch over epochs 6-8 (82.00 -> 84.00 at lr 3.1e-05 -> 7.8e-06; "
        "needs <= +0.50); arm nokd seed 0: 2 epochs, fewer than 3 for a slope",
    )
    assert (
        plateaued({"kd": {0: Curve([], [])}}, bound=0.005).detail == "arm kd seed 0: 0 epochs, fewer than 3 for a slope"
    )
    passing = plateaued({"kd": {0: flat}}, bound=0.005)
    assert passing.passed and passing.detail.startswith("arm kd seed 0: +0.10 points an epoch over epochs 6-8")


def test_plateaued_boundary_and_no_data() -> None:
    assert plateaued({"kd": {0: _curve(0.7, 0.8, 0.9)}}, bound=0.1).passed  # a slope of exactly 0.1
    assert not plateaued({"kd": {0: _curve(0.7, 0.8, 0.9001)}}, bound=0.1).passed
    assert plateaued({}, bound=0.005).detail == "not measured"
    assert not plateaued({"kd": {}}, bound=0.005).passed


def test_keep_ratio_per_arm_target() -> None:
    realised = {"evit-0.5": {0: 0.50, 1: 0.53}, "evit-0.7": {0: 0.71}}
    target = {"evit-0.5": 0.5, "evit-0.7": 0.7}
    check = keep_ratio(realised, target, tolerance=0.02)
    assert check == Check(
        "realised keep ratio matches the target in training",
        False,
        "arm evit-0.5 seed 1: kept 53.00% vs target 50.00% (off by 3.00 points, needs <= 2.00)",
    )
    passing = keep_ratio({"evit-0.5": {0: 0.50, 1: 0.49}, "evit-0.7": {0: 0.715}}, target, tolerance=0.02)
    assert passing.passed
    assert passing.detail == "arm evit-0.7 seed 0: kept 71.50% vs target 70.00% (off by 1.50 points, needs <= 2.00)"


def test_keep_ratio_boundary_no_data_and_unknown_arm() -> None:
    assert keep_ratio({"a": {0: 0.52, 1: 0.48}}, {"a": 0.5}, tolerance=0.02).passed
    assert not keep_ratio({"a": {0: 0.5201}}, {"a": 0.5}, tolerance=0.02).passed
    assert keep_ratio({}, {"a": 0.5}, tolerance=0.02).detail == "not measured"
    with pytest.raises(ValueError, match="no target keep ratio for arm b"):
        keep_ratio({"b": {0: 0.5}}, {"a": 0.5}, tolerance=0.02)


def test_gmacs_matched_shows_percentages() -> None:
    check = gmacs_matched({"evit vs tome": {0: (4.6, 4.2), 1: (4.2, 4.2)}}, tolerance=0.05)
    assert check == Check(
        "compared arms have matched GMACs",
        False,
        "pair evit vs tome seed 0: 4.6000 vs 4.2000 GMACs (+9.52%, needs within +-5.00%)",
    )
    passing = gmacs_matched({"p": {0: (4.0, 4.1), 1: (4.2, 4.2)}}, tolerance=0.05)
    assert passing.passed
    assert passing.detail == "pair p seed 0: 4.0000 vs 4.1000 GMACs (-2.44%, needs within +-5.00%)"


def test_gmacs_matched_boundary_and_no_data() -> None:
    assert gmacs_matched({"p": {0: (1.05, 1.0), 1: (0.95, 1.0)}}, tolerance=0.05).passed  # exactly 5% either way
    assert not gmacs_matched({"p": {0: (1.0501, 1.0)}}, tolerance=0.05).passed
    assert gmacs_matched({"p": {}}, tolerance=0.05).detail == "not measured"


def test_heterogeneity_falls_names_the_first_layer_where_it_does_not_fall() -> None:
    profiles = {
        "mto": {0: [2.0, 1.5, 1.2, 1.0]},
        "base": {0: [2.0, 1.5, 1.6, 1.7], 1: [2.0, 1.5, 1.5, 1.4]},  # seed 1: flat from layer 1 to 2
        "short": {0: [2.0]},
    }
    check = heterogeneity_falls(profiles)
    assert check == Check(
        "heterogeneity falls layer by layer",
        False,
        "arm base seed 0: H does not fall from layer 1 to 2 (1.50 -> 1.60 nats); "
        "arm base seed 1: H does not fall from layer 1 to 2 (1.50 -> 1.50 nats); "
        "arm short seed 0: 1 layer, no fall measured",
    )


def test_heterogeneity_falls_passes_with_the_smallest_fall_shown() -> None:
    check = heterogeneity_falls({"mto": {0: [2.0, 1.5, 1.2, 1.0]}, "base": {0: [2.1, 1.0, 0.5]}})
    assert check.passed
    assert check.detail == "arm mto seed 0: smallest fall from layer 2 to 3 (1.20 -> 1.00 nats)"


def test_heterogeneity_falls_no_data() -> None:
    assert heterogeneity_falls({}) == Check("heterogeneity falls layer by layer", False, "not measured")


def test_clears_floor_on_shared_seeds() -> None:
    measure = {"mto": {0: 0.30, 1: 0.25}, "base": {0: 0.40, 2: 0.10}}  # base seed 2 has no floor: not judged
    floor = {0: 0.20, 1: 0.20}
    random = {0: 0.25, 1: 0.10}
    # mto seed 0 is exactly at the gap over the pixels (0.3 - 0.2 < 0.1 in floats), not over the random encoder
    check = clears_floor(measure, {"pixels": floor, "random": random}, gap=0.1)
    assert check == Check(
        "arms clear the floors",
        False,
        "seed 1: mto 25.00 vs pixels 20.00 (+5.00 points, needs >= +10.00); "
        "seed 0: mto 30.00 vs random 25.00 (+5.00 points, needs >= +10.00)",
    )
    passing = clears_floor({"mto": {0: 0.30}, "base": {0: 0.40}}, {"pixels": floor}, gap=0.1)
    assert passing.passed
    assert passing.detail == "seed 0: mto 30.00 vs pixels 20.00 (+10.00 points, needs >= +10.00)"
    assert clears_floor({"mto": {2: 0.5}}, {"pixels": floor}, gap=0.1).detail == "pixels not measured"
    assert clears_floor({"mto": {0: 0.5}}, {"pixels": floor, "random": {}}, gap=0.1).detail == "random not measured"
    assert clears_floor({}, {"pixels": floor}, gap=0.1).detail == "not measured"


def test_above_chance_lists_offending_models_worst_first() -> None:
    top1 = {
        "teacher": {0: 0.85, 1: 0.86},
        "finetune/masked": {0: 0.20, 1: 0.18},
        "prune/evit-full-0.5": {0: 0.11},
        "tome/full-r5": {0: 0.195},
    }
    check = above_chance(top1, num_classes=10, fraction=0.1)  # the bar: 0.1 + 0.1 * 0.9 = 0.19
    assert check == Check(
        "models above chance",
        False,
        "needs >= 19.00 (chance 10.00): prune/evit-full-0.5 seed 0 11.00, finetune/masked seed 1 18.00",
    )
    passing = above_chance({"teacher": {0: 0.85}, "tome/full-r5": {0: 0.195}}, num_classes=10, fraction=0.1)
    assert passing.passed
    assert passing.detail == "needs >= 19.00 (chance 10.00): tome/full-r5 seed 0 19.50"


@pytest.mark.parametrize(("top1", "passed"), [(0.54, False), (0.55, True), (0.56, True)])
def test_above_chance_boundary_for_two_classes(top1: float, passed: bool) -> None:
    assert above_chance({"model": {0: top1}}, num_classes=2, fraction=0.1).passed is passed


def test_above_chance_no_data() -> None:
    assert above_chance({}, num_classes=10, fraction=0.1).detail == "not measured"
    assert not above_chance({"model": {}}, num_classes=10, fraction=0.1).passed


def test_testable_reports_the_first_failed_check_and_counts_the_rest() -> None:
    ok = Check("ok", True, "fine")
    first = Check("teacher stronger than the no-KD student", False, "seed 0: teacher 85.05 vs student 86.46")
    second = Check("trained arms have plateaued", False, "not measured")
    third = Check("models above chance", False, "x")
    assert testable([ok, ok]) is None
    assert testable([]) is None
    assert testable([ok, first]) == (
        "not testable here: teacher stronger than the no-KD student (seed 0: teacher 85.05 vs student 86.46)"
    )
    assert testable([first, ok, second]).endswith("(seed 0: teacher 85.05 vs student 86.46); and 1 more failed check")
    assert testable([second, first, third]) == (
        "not testable here: trained arms have plateaued (not measured); and 2 more failed checks"
    )


def test_a_nan_measurement_fails() -> None:
    nan = float("nan")
    assert not teacher_gap({0: 0.9, 1: nan}, {0: 0.8, 1: 0.8}, minimum=0.02).passed
    assert not plateaued({"kd": {0: _curve(0.8, 0.8, nan)}}, bound=0.005).passed
    assert not keep_ratio({"a": {0: nan}}, {"a": 0.5}, tolerance=0.02).passed
    assert not gmacs_matched({"p": {0: (nan, 1.0)}}, tolerance=0.05).passed
    assert heterogeneity_falls({"a": {0: [2.0, nan, 1.0]}}).detail == (
        "arm a seed 0: H does not fall from layer 0 to 1 (2.00 -> nan nats)"
    )
    assert not clears_floor({"a": {0: 0.5}}, {"pixels": {0: nan}}, gap=0.1).passed
    check = above_chance({"ok": {0: 0.9}, "missing": {0: 0.9, 1: nan}}, num_classes=10, fraction=0.1)
    assert check.detail == "needs >= 19.00 (chance 10.00): missing seed 1 nan" and not check.passed


def test_check_to_json() -> None:
    assert Check("n", False, "d").to_json() == {"name": "n", "passed": False, "detail": "d"}


def test_mto_collapse_is_a_saturated_h_with_a_worse_reconstruction() -> None:
    ln4 = math.log(4)
    arms = {
        "mae MTO": {
            0: Collapse(0.0128, ln4, 0.4393, 0.4100),  # the cpu run's: H 0.9% of ln 4, loss worse
            1: Collapse(0.0128, ln4, 0.4000, 0.4100),  # saturated, but it reconstructs better
            2: Collapse(0.60, ln4, 0.4500, 0.4100),  # worse, but H far from saturated
        }
    }
    check = not_collapsed(arms, fraction=0.05)
    assert check == Check(
        "MTO has not collapsed",
        False,
        "arm mae MTO seed 0: last-layer H 0.013 nats (0.9% of its maximum 1.39, saturated under 5%), "
        "reconstruction loss 0.4393 vs the baseline's 0.4100",
    )
    assert not_collapsed({"mae MTO": {1: arms["mae MTO"][1], 2: arms["mae MTO"][2]}}, fraction=0.05).passed
    assert not not_collapsed({"mae MTO": {0: Collapse(0.6, math.nan, 0.4, 0.41)}}, fraction=0.05).passed


def test_the_teacher_on_maskedkds_patches_must_beat_the_no_kd_student() -> None:
    # the cpu run's seed 0: the teacher on a random half of its 16 patches scored 69.5%, the student 84.7%
    check = teacher_gap({0: 0.695}, {0: 0.847}, minimum=0.02, view="on MaskedKD's patches")
    assert check == Check(
        "teacher on MaskedKD's patches stronger than the no-KD student",
        False,
        "seed 0: teacher on MaskedKD's patches 69.50 vs student 84.70 (-15.20 points, needs >= +2.00)",
    )
