"""The preconditions checked before every verdict: is the claim testable on this run at all?

A verdict on a claim only means something if the run it rests on is sound: the teacher is stronger
than the student it teaches, the trained arms have converged, pruning kept the tokens it was meant
to, compared arms cost the same, the models learned something. Each function here takes plain
per-seed numbers ({seed: value}, per arm where there are several) and thresholds, and returns a
Check: it passes only if it passes on every seed and for every arm, and with no data at all it fails
as "not measured". Its detail gives the numbers of each failing seed/arm or, if none fails, of the
worst one. Percent-style numbers (top-1, keep ratios) are shown in points: x100, 2 decimals.

A NaN (a missing measurement) fails. Thresholds are compared with a slack of 1e-9 so that a value
exactly at a threshold passes despite floating-point rounding (0.3 - 0.1 < 0.2 in floats);
heterogeneity must fall strictly, without slack.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from maskprune.report.stats import NOT_TESTABLE

_SLACK = 1e-9
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class Check:
    """The outcome of one precondition."""

    name: str  # short: "teacher stronger than the no-KD student"
    passed: bool
    detail: str  # the numbers of the failing (or, if none fails, the worst) seed/arm

    def to_json(self) -> dict:
        """{"name", "passed", "detail"}."""
        return {"name": self.name, "passed": self.passed, "detail": self.detail}


@dataclass(frozen=True)
class _Case:
    """One seed (of one arm) under a check: its margin (negative: fails) and its numbers."""

    margin: float
    text: str


def _verdict(name: str, cases: list[_Case]) -> Check:
    """The check that passes if every case passes; its detail lists the failing cases, else the worst."""
    if not cases:
        return Check(name, False, NOT_MEASURED)
    failing = [c for c in cases if not c.margin >= -_SLACK]  # NaN fails
    if failing:
        return Check(name, False, "; ".join(c.text for c in failing))
    return Check(name, True, min(cases, key=lambda c: c.margin).text)


def _nan_lowest(value: float) -> float:
    """A sort key that ranks NaN (a missing measurement) below every number."""
    return -math.inf if math.isnan(value) else value


def _points(value: float, signed: bool = False) -> str:
    """A fraction in points: 0.8505 -> '85.05' (signed: '+85.05')."""
    return f"{value * 100:{'+' if signed else ''}.2f}"


def _plural(count: int, word: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def _gaps(
    measure: dict[str, dict[int, float]],
    reference: dict[int, float],
    reference_name: str,
    gap: float,
) -> list[_Case]:
    """One case per arm and seed both have: the arm's value minus the reference's, against `gap`."""
    cases = []
    for arm, seeds in measure.items():
        for seed in sorted(set(seeds) & set(reference)):
            above = seeds[seed] - reference[seed]
            text = (
                f"seed {seed}: {arm} {_points(seeds[seed])} vs {reference_name} {_points(reference[seed])} "
                f"({_points(above, signed=True)} points, needs >= {_points(gap, signed=True)})"
            )
            cases.append(_Case(above - gap, text))
    return cases


def teacher_gap(
    teacher: dict[int, float],
    student: dict[int, float],
    minimum: float,
    view: str = "",
    student_name: str = "the no-KD student",
) -> Check:
    """Whether the teacher is stronger than the student trained without it, on every shared seed.

    Args:
        teacher: the teacher's top-1 (a fraction) per seed.
        student: the top-1 per seed of the student trained without the teacher.
        minimum: the least teacher-minus-student gap, as a fraction (0.02 = 2 points).
        view: how the teacher is measured if not on the whole image ("on MaskedKD's patches").
        student_name: what that student is.
    """
    teacher_name = f"teacher {view}" if view else "teacher"
    cases = _gaps({teacher_name: teacher}, student, "student", minimum)
    return _verdict(f"{teacher_name} stronger than {student_name}", cases)


def teacher_larger(
    teacher: dict[int, float],
    student: dict[int, float],
) -> Check:
    """Whether the teacher has strictly more parameters than its student, on every shared seed: distilling
    into a student as large as its teacher is not the compression a distillation claim is about.

    Args:
        teacher: the teacher's parameter count per seed, in millions.
        student: the student's parameter count per seed, in millions.
    """
    cases = []
    for seed in sorted(set(teacher) & set(student)):
        more = teacher[seed] - student[seed]
        text = f"seed {seed}: teacher {teacher[seed]:.2f} M vs student {student[seed]:.2f} M parameters"
        cases.append(_Case(more if more > 0 else -math.inf, text))  # strictly larger; NaN fails
    return _verdict("the teacher is larger than the student", cases)


@dataclass(frozen=True)
class Curve:
    """One arm's training on one seed: after each epoch, the validation top-1 and the learning rate."""

    val: list[float]
    lr: list[float]


def plateaued(
    curves: dict[str, dict[int, Curve]],
    bound: float,
) -> Check:
    """Whether every trained arm has stopped improving: the least-squares slope of its validation top-1
    over the last quarter of its epochs (at least 3) is at most `bound` per epoch.

    A slope over a quarter rather than the last epoch's gain: a cosine schedule ends at a learning
    rate so low that its last epoch barely moves, whatever came before. The detail gives that
    quarter's learning rates, so the slope is read with the schedule in mind.

    Args:
        curves: per arm and seed, the validation top-1 (a fraction) and learning rate after each epoch.
        bound: the largest slope, as a fraction per epoch.
    """
    cases = []
    for arm, seeds in curves.items():
        for seed in sorted(seeds):
            val, lr = seeds[seed].val, seeds[seed].lr
            if len(val) < 3:
                text = f"arm {arm} seed {seed}: {_plural(len(val), 'epoch')}, fewer than 3 for a slope"
                cases.append(_Case(float("-inf"), text))
                continue
            k = max(3, math.ceil(len(val) / 4))
            ys = val[-k:]
            mean_x, mean_y = (k - 1) / 2, sum(ys) / k
            slope = sum((x - mean_x) * (y - mean_y) for x, y in enumerate(ys)) / sum(
                (x - mean_x) ** 2 for x in range(k)
            )
            text = (
                f"arm {arm} seed {seed}: {_points(slope, signed=True)} points an epoch over epochs "
                f"{len(val) - k + 1}-{len(val)} ({_points(ys[0])} -> {_points(ys[-1])} at lr {lr[-k]:.1e} -> "
                f"{lr[-1]:.1e}; needs <= {_points(bound, signed=True)})"
            )
            cases.append(_Case(bound - slope, text))
    return _verdict("trained arms have plateaued", cases)


def keep_ratio(
    realised: dict[str, dict[int, float]],
    target: dict[str, float],
    tolerance: float,
    when: str = "in training",
) -> Check:
    """Whether pruning kept the share of tokens it was configured to, for every arm and seed.

    Args:
        realised: per arm and seed, the share of tokens actually kept (a fraction).
        target: per arm, the configured keep ratio (it differs per pruning stage and keep rate).
        tolerance: the largest |realised - target|, as a fraction.
        when: where the share was measured, for the check's name ("in training", "at inference").
    """
    cases = []
    for arm, seeds in realised.items():
        if arm not in target:
            raise ValueError(f"no target keep ratio for arm {arm}")
        for seed in sorted(seeds):
            off = abs(seeds[seed] - target[arm])
            text = (
                f"arm {arm} seed {seed}: kept {_points(seeds[seed])}% vs target {_points(target[arm])}% "
                f"(off by {_points(off)} points, needs <= {_points(tolerance)})"
            )
            cases.append(_Case(tolerance - off, text))
    return _verdict(f"realised keep ratio matches the target {when}", cases)


def gmacs_matched(
    pairs: dict[str, dict[int, tuple[float, float]]],
    tolerance: float,
) -> Check:
    """Whether the arms compared at matched cost really cost the same: |a / b - 1| <= `tolerance`.

    Args:
        pairs: per pair label and seed, the GMACs per image of the two arms (a, b), b > 0.
        tolerance: the largest relative difference, as a fraction (0.05 = 5%).
    """
    cases = []
    for label, seeds in pairs.items():
        for seed in sorted(seeds):
            a, b = seeds[seed]
            relative = a / b - 1.0
            text = (
                f"pair {label} seed {seed}: {a:.4f} vs {b:.4f} GMACs "
                f"({_points(relative, signed=True)}%, needs within +-{_points(tolerance)}%)"
            )
            cases.append(_Case(tolerance - abs(relative), text))
    return _verdict("compared arms have matched GMACs", cases)


def heterogeneity_falls(
    profiles: dict[str, dict[int, list[float]]],
) -> Check:
    """Whether each arm's token heterogeneity strictly falls from every layer to the next.

    Args:
        profiles: per arm and seed, the heterogeneity H (nats) per layer, layer 0 the input embedding.
    """
    cases = []
    for arm, seeds in profiles.items():
        for seed in sorted(seeds):
            profile = seeds[seed]
            if len(profile) < 2:
                cases.append(
                    _Case(float("-inf"), f"arm {arm} seed {seed}: {_plural(len(profile), 'layer')}, no fall measured")
                )
                continue
            falls = [profile[i] - profile[i + 1] for i in range(len(profile) - 1)]
            rise = next((i for i, fall in enumerate(falls) if not fall > 0.0), None)  # NaN does not fall
            if rise is None:  # strictly falling: report the smallest fall
                layer = min(range(len(falls)), key=falls.__getitem__)
                what, margin = "smallest fall", falls[layer]
            else:
                layer, what, margin = rise, "H does not fall", float("-inf")
            text = (
                f"arm {arm} seed {seed}: {what} from layer {layer} to {layer + 1} "
                f"({profile[layer]:.2f} -> {profile[layer + 1]:.2f} nats)"
            )
            cases.append(_Case(margin, text))
    return _verdict("heterogeneity falls layer by layer", cases)


@dataclass(frozen=True)
class Collapse:
    """What tells a collapsed MTO run on one seed: its last-layer H, the largest H its visible tokens allow,
    and the final reconstruction loss of MTO and of the baseline."""

    h: float
    h_max: float
    loss: float
    baseline_loss: float


def not_collapsed(
    arms: dict[str, dict[int, Collapse]],
    fraction: float,
) -> Check:
    """Whether no MTO arm has collapsed: its last-layer heterogeneity H saturated below `fraction` of its
    maximum while its reconstruction loss ends above the baseline's (the failure the MTO paper warns its
    ranking loss can cause; such an H passes `heterogeneity_falls` most easily).

    Args:
        arms: per arm and seed, its last-layer H, the H of uniform attention over its visible tokens
            (ln of their number), and the final reconstruction losses.
        fraction: the share of the maximum H under which H counts as saturated.
    """
    cases = []
    for arm, seeds in arms.items():
        for seed in sorted(seeds):
            c = seeds[seed]
            saturation, worse = c.h / c.h_max - fraction, c.loss - c.baseline_loss
            margin = max(saturation, -worse) if not (math.isnan(saturation) or math.isnan(worse)) else math.nan
            text = (
                f"arm {arm} seed {seed}: last-layer H {c.h:.3f} nats ({c.h / c.h_max:.1%} of its maximum "
                f"{c.h_max:.2f}, saturated under {fraction:.0%}), reconstruction loss {c.loss:.4f} vs the "
                f"baseline's {c.baseline_loss:.4f}"
            )
            cases.append(_Case(margin, text))
    return _verdict("MTO has not collapsed", cases)


def rauc_defined(
    rauc: dict[str, dict[int, float]],
) -> Check:
    """Whether RAUC is defined for every arm on every seed. RAUC divides by the baseline's gain over the
    epoch range, so it is undefined where the baseline's probe does not improve over that range, and a
    claim about faster convergence cannot be read on such a seed.

    Args:
        rauc: per arm and seed (every seed the arm was measured on), RAUC over the primary epoch range;
            NaN where it is undefined.
    """
    name = "RAUC is defined (the baseline's probe improves over the range)"
    if not any(rauc.values()):
        return Check(name, False, NOT_MEASURED)
    undefined = [
        f"{arm} seed {seed}" for arm, seeds in rauc.items() for seed in sorted(seeds) if math.isnan(seeds[seed])
    ]
    if undefined:
        return Check(name, False, f"undefined for {', '.join(undefined)}")
    return Check(name, True, "defined on every seed")


def clears_floor(
    measure: dict[str, dict[int, float]],
    floors: dict[str, dict[int, float]],
    gap: float,
) -> Check:
    """Whether each arm's measure lies at least `gap` above each floor of the seed, on every shared seed.

    Args:
        measure: per arm and seed, the measured value (a fraction, e.g. a probe's top-1).
        floors: per floor and seed, what the measure gives without a learned representation (e.g. the
            probe on raw pixels, or on a randomly initialised encoder).
        gap: the least measure-minus-floor, as a fraction.
    """
    cases = []
    for name, floor in floors.items():
        judged = _gaps(measure, floor, name, gap)
        cases += judged or ([_Case(float("-inf"), f"{name} {NOT_MEASURED}")] if measure else [])
    return _verdict("arms clear the floors", cases)


def above_chance(
    top1: dict[str, dict[int, float]],
    num_classes: int,
    fraction: float,
) -> Check:
    """Whether every model has gone `fraction` of the way from chance to 100% top-1, on every seed.

    Args:
        top1: per model and seed, the test top-1 (a fraction).
        num_classes: the number of classes; chance is 1 / num_classes.
        fraction: how far from chance to 100% each model must be (0.1: 0.19 for 10 classes).
    """
    chance = 1.0 / num_classes
    bar = chance + fraction * (1.0 - chance)
    worst = {model: min(seeds.items(), key=lambda item: _nan_lowest(item[1])) for model, seeds in top1.items() if seeds}
    ranked = sorted(worst, key=lambda model: _nan_lowest(worst[model][1]))
    if not ranked:
        return Check("models above chance", False, NOT_MEASURED)
    failing = [model for model in ranked if not worst[model][1] >= bar - _SLACK]
    listed = ", ".join(f"{model} seed {worst[model][0]} {_points(worst[model][1])}" for model in failing or ranked[:1])
    detail = f"needs >= {_points(bar)} (chance {_points(chance)}): {listed}"
    return Check("models above chance", not failing, detail)


def testable(
    checks: Sequence[Check],
) -> str | None:
    """None if every check passed, else why the claim is not testable: the first failed check, and how
    many more failed.

    Args:
        checks: the claim's preconditions, in the order to report them.
    """
    failed = [c for c in checks if not c.passed]
    if not failed:
        return None
    more = f"; and {_plural(len(failed) - 1, 'more failed check')}" if len(failed) > 1 else ""
    return f"{NOT_TESTABLE}: {failed[0].name} ({failed[0].detail}){more}"


testable.__test__ = False  # its name starts with "test": keep pytest from collecting it where it is imported
