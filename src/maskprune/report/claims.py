"""The papers' claims as the report decides them: pre-registered tests, the checks they need, one word each.

A section that judges a paper's claim states it as a `Claim`: its tests (paired comparisons fixed
in params before the run, `report.rules`) and the checks its comparison needs (`report.checks`).
`conclude` adjusts every claim's p-values together (Holm-Bonferroni over the whole family of
headline tests) and gives each claim its word and verdict line (see `maskprune.report.stats`):
not testable here when a check fails, else reproduced, contradicted or inconclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from maskprune.report.checks import Check, testable
from maskprune.report.stats import (
    CONTRADICTED,
    INCONCLUSIVE,
    MOST_SEEDS,
    NOT_TESTABLE,
    REPRODUCED,
    Interval,
    Test,
    decide,
    holm,
    seeds_to_decide,
)


@dataclass
class Claim:
    """A paper's claim as tested here: what is compared, its tests and the checks they need."""

    summary: str  # the comparison in words, e.g. "DynamicViT at keep 0.5: masked init - full init"
    tests: list[Test]
    checks: list[Check]
    points: bool = True  # differences of accuracies, shown in points; else plain numbers (RAUC)


@dataclass(frozen=True)
class Outcome:
    """A claim's verdict: the word, the line the report prints, and every number behind it."""

    word: str
    line: str
    tests: list[dict[str, Any]]
    checks: list[dict[str, Any]]
    points: bool = True  # the tests' differences are accuracies, shown in points

    def to_json(self) -> dict[str, Any]:
        return {"word": self.word, "line": self.line, "tests": self.tests, "checks": self.checks}


def differences(reference: dict[int, float], arm: dict[int, float]) -> dict[int, float]:
    """{seed: arm - reference} over the seeds both have: the paired differences a test is run on."""
    return {seed: arm[seed] - reference[seed] for seed in sorted(set(reference) & set(arm))}


def combine(words: list[str]) -> str:
    """A claim's word from its tests' words: contradicted if any is, reproduced if all are."""
    if CONTRADICTED in words:
        return CONTRADICTED
    if words and all(w == REPRODUCED for w in words):
        return REPRODUCED
    return INCONCLUSIVE


def conclude(claims: dict[str, Claim], confidence: float) -> dict[str, Outcome]:
    """Each claim's outcome, the p-values Holm-adjusted over every claim's tests together.

    Args:
        claims: claim key ('A') -> claim.
        confidence: of the intervals; the tests run at alpha = 1 - confidence.
    """
    alpha = 1.0 - confidence
    family = {(key, test.name): test for key, claim in claims.items() for test in claim.tests}
    raw = {f"{key}: {name}": test.p() for (key, name), test in family.items()}
    adjusted = holm(raw)
    outcomes = {}
    for key, claim in claims.items():
        rows, words = [], []
        for test in claim.tests:
            iv = test.interval(confidence) if test.diffs else Interval(math.nan, None, None, 0, confidence)
            p, p_holm = raw[f"{key}: {test.name}"], adjusted[f"{key}: {test.name}"]
            word = decide(iv.mean, test.delta, p_holm, alpha)
            words.append(word)
            # NOTE: at alpha over the family (Holm's strictest step), so the number suffices whatever its rank
            power = seeds_to_decide(list(test.diffs.values()), test.delta, alpha / len(family))
            rows.append(
                {
                    "name": test.name,
                    "mean": None if math.isnan(iv.mean) else iv.mean,
                    "low": iv.low,
                    "high": iv.high,
                    "n": iv.n,
                    "delta": test.delta,
                    "p": p,
                    "p_holm": p_holm,
                    "word": word,
                    "seeds_to_decide": power if word == INCONCLUSIVE else None,
                }
            )
        failed = testable(claim.checks)
        word = NOT_TESTABLE if failed else combine(words)
        measured = "; ".join(_test_text(row, claim.points, alpha, len(family), not failed) for row in rows)
        head = f"{failed}. Measured anyway, not a verdict" if failed else word
        outcomes[key] = Outcome(
            word,
            f"{head}. {claim.summary}: {measured}.",
            rows,
            [check.to_json() for check in claim.checks],
            claim.points,
        )
    return outcomes


def _test_text(row: dict[str, Any], points: bool, alpha: float, family: int, checks_met: bool) -> str:
    """'masked - full +1.20 [+0.40, +2.00] (n=5) points, needs > +0.00: p 0.004, Holm p 0.028 (alpha 0.05, 7 tests)
    -> reproduced'; while a check fails the word is what the test alone says: '-> reproduced, were the checks met'."""
    (scale, digits), unit = print_scale(points), " points" if points else ""
    if row["mean"] is None:
        return f"{row['name']}: not measured"
    mean = f"{row['mean'] * scale:+.{digits}f}"
    bounds = "" if row["low"] is None else f" [{row['low'] * scale:+.{digits}f}, {row['high'] * scale:+.{digits}f}]"
    value = f"{row['name']} {mean}{bounds} (n={row['n']}){unit}, needs > {row['delta'] * scale:+.{digits}f}"
    if row["p"] is None and row["n"] < 2:
        return f"{value}: no test with one seed (a spread needs two)"
    if row["p"] is None:
        return (
            f"{value}: no test, the {row['n']} seeds' differences are equal (a tie at the resolution of "
            "test top-1, so their spread is unknown, not zero); more seeds give it"
        )
    word = row["word"] if checks_met else f"{row['word']}, were the checks met"
    p, p_holm = format_p(row["p"]), format_p(row["p_holm"])
    line = f"{value}: p {p}, Holm p {p_holm} (alpha {alpha:.2f}, {counted(family, 'test')}) -> {word}"
    if row["word"] != INCONCLUSIVE:
        return line
    if row["seeds_to_decide"] is None:
        return f"{line}; at this spread no number of seeds up to {MOST_SEEDS} would decide it"
    return f"{line}; at this mean and spread about {row['seeds_to_decide']} seeds would decide it (alpha / {family})"


def counted(count: int, noun: str) -> str:
    """'1 test', '7 tests': `count` and `noun`, plural unless the count is 1."""
    return f"{count} {noun}{'s' * (count != 1)}"


def format_p(value: float) -> str:
    """A p-value to 3 places; one that rounds to 0 reads '< 0.001', never 'p 0.000'."""
    return "< 0.001" if value < 0.0005 else f"{value:.3f}"


def print_scale(points: bool) -> tuple[float, int]:
    """How a claim's differences print, (factor, decimals): accuracies in points, else plain numbers (RAUC)."""
    return (100.0, 2) if points else (1.0, 3)
