"""Claims decided together: Holm over every claim's tests, checks first (maskprune.report.claims)."""

from __future__ import annotations

import pytest

from maskprune.report.checks import Check
from maskprune.report.claims import Claim, combine, conclude, differences, format_p
from maskprune.report.stats import CONTRADICTED, INCONCLUSIVE, NOT_TESTABLE, REPRODUCED, Test

PASS = Check("the teacher is stronger", True, "seed 0: +3.00 points")


def test_differences_pair_the_seeds_both_arms_have() -> None:
    assert differences({0: 0.5, 1: 0.6, 2: 0.7}, {1: 0.65, 2: 0.7, 3: 0.9}) == pytest.approx({1: 0.05, 2: 0.0})


@pytest.mark.parametrize(
    ("words", "word"),
    [
        ([REPRODUCED, REPRODUCED], REPRODUCED),
        ([REPRODUCED, INCONCLUSIVE], INCONCLUSIVE),
        ([REPRODUCED, CONTRADICTED], CONTRADICTED),
        ([], INCONCLUSIVE),
    ],
)
def test_a_claim_is_reproduced_only_if_every_test_is(words: list[str], word: str) -> None:
    assert combine(words) == word


def test_holm_runs_over_every_claims_tests_and_decides_each_word() -> None:
    # differences 0.030, 0.032, 0.034: t = 0.032 / (0.002 / sqrt 3) = 27.71, df 2, p = 0.0013 (scipy)
    up = Test("masked - full", {0: 0.030, 1: 0.032, 2: 0.034}, 0.0)
    # differences -0.05, -0.04, -0.06 against -0.005: t = -0.045 / (0.01 / sqrt 3) = -7.79, p = 0.0161 (scipy: 0.016065)
    down = Test("maskedkd - kd", {0: -0.05, 1: -0.04, 2: -0.06}, -0.005)
    # differences straddling 0: p = 1.0 exactly (mean 0)
    flat = Test("kd - none", {0: -0.01, 1: 0.0, 2: 0.01}, 0.0)
    out = conclude({"A": Claim("A's comparison", [up], [PASS]), "B": Claim("B's", [down, flat], [PASS])}, 0.95)
    a, b = out["A"].tests[0], out["B"].tests
    assert a["p"] == pytest.approx(0.0012995, rel=1e-3) and b[0]["p"] == pytest.approx(0.016065, rel=1e-3)
    # Holm over m = 3: 3 x 0.0013 = 0.0039; max(0.0039, 2 x 0.0161) = 0.0322; max(.., 1 x 1.0) = 1.0
    assert a["p_holm"] == pytest.approx(3 * 0.0012995, rel=1e-3)
    assert b[0]["p_holm"] == pytest.approx(2 * 0.016065, rel=1e-3) and b[1]["p_holm"] == pytest.approx(1.0)
    assert [a["word"], b[0]["word"], b[1]["word"]] == [REPRODUCED, CONTRADICTED, INCONCLUSIVE]
    assert out["A"].word == REPRODUCED and out["B"].word == CONTRADICTED
    assert out["A"].line.startswith("reproduced. A's comparison: masked - full +3.20 [")
    assert "Holm p 0.004 (alpha 0.05, 3 tests) -> reproduced" in out["A"].line


def test_a_failed_check_makes_the_claim_not_testable_but_keeps_its_numbers() -> None:
    failed = Check("trained arms have plateaued", False, "arm full seed 0: 1 epoch, no gain measured")
    test = Test("masked - full", {0: 0.030, 1: 0.032, 2: 0.034}, 0.0)
    outcome = conclude({"A": Claim("A's comparison", [test], [PASS, failed])}, 0.95)["A"]
    assert outcome.word == NOT_TESTABLE
    assert outcome.line.startswith(
        "not testable here: trained arms have plateaued (arm full seed 0: 1 epoch, no gain measured). "
        "Measured anyway, not a verdict. A's comparison:"
    )
    assert outcome.tests[0]["word"] == REPRODUCED  # what the test says, were the check to pass
    assert outcome.line.endswith("(alpha 0.05, 1 test) -> reproduced, were the checks met.")
    assert outcome.checks == [PASS.to_json(), failed.to_json()]


def test_one_seed_gives_no_test_and_an_inconclusive_word() -> None:
    outcome = conclude({"D": Claim("RAUC", [Test("mae RAUC", {0: 0.4}, 0.0)], [PASS], points=False)}, 0.95)["D"]
    assert outcome.word == INCONCLUSIVE and outcome.tests[0]["p"] is None
    assert (
        outcome.line
        == "inconclusive. RAUC: mae RAUC +0.400 (n=1), needs > +0.000: no test with one seed (a spread needs two)."
    )


def test_equal_differences_on_every_seed_are_no_test_and_say_why() -> None:
    """Seed 0 and 1 of the committed cpu run: MaskedKD - full-image KD was -0.16 points on both."""
    tied = Test("MaskedKD - full-image KD", {0: 0.8474 - 0.8490, 1: 0.8478 - 0.8494}, -0.005)
    outcome = conclude({"B": Claim("B's", [tied], [PASS])}, 0.95)["B"]
    assert outcome.word == INCONCLUSIVE and outcome.tests[0]["p"] is None
    assert outcome.tests[0]["seeds_to_decide"] is None and outcome.tests[0]["low"] is None
    assert outcome.line.endswith(
        "needs > -0.50: no test, the 2 seeds' differences are equal (a tie at the resolution of test top-1, "
        "so their spread is unknown, not zero); more seeds give it."
    )


def test_an_inconclusive_test_says_how_many_seeds_would_decide_it() -> None:
    # mean 0.01, sd 0.02: t = 0.5 sqrt(n) first reaches the 97.5% t quantile at n = 18 (tables: 0.5 sqrt(17) =
    # 2.062 < t(16) 2.120; 0.5 sqrt(18) = 2.121 >= t(17) 2.110)
    wide = Test("masked - full", {0: 0.01, 1: 0.03, 2: -0.01}, 0.0)
    outcome = conclude({"A": Claim("A's", [wide], [PASS])}, 0.95)["A"]
    assert outcome.word == INCONCLUSIVE and outcome.tests[0]["seeds_to_decide"] == 18
    assert outcome.line.endswith("at this mean and spread about 18 seeds would decide it (alpha / 1).")
    # at the threshold no number of seeds decides; a decided test has no power line
    level = Test("kd - none", {0: -0.01, 1: 0.0, 2: 0.01}, 0.0)
    decided = Test("up", {0: 0.030, 1: 0.032, 2: 0.034}, 0.0)
    out = conclude({"B": Claim("B's", [level, decided], [PASS])}, 0.95)["B"]
    assert "no number of seeds up to 1000 would decide it" in out.line
    assert out.tests[1]["seeds_to_decide"] is None and out.tests[1]["word"] == REPRODUCED


def test_a_p_value_that_rounds_to_zero_reads_below_a_thousandth() -> None:
    assert [format_p(p) for p in (0.0004999, 0.0005, 0.0123, 1.0)] == ["< 0.001", "0.001", "0.012", "1.000"]
