"""Which seeds the report may aggregate: their params may differ only where no result can change."""

from __future__ import annotations

from maskprune.report.results import differing_keys


def test_seeds_compare_only_on_keys_that_change_results() -> None:
    a = {"seed": 0, "tracking": {"uri": ""}, "prune": {"keep_rates": [0.5]}, "runtime": {"progress": "auto"}}
    b = {
        "seed": 1,
        "tracking": {"uri": "http://x"},
        "prune": {"keep_rates": [0.7]},
        "runtime": {"progress": "never"},
    }
    assert differing_keys(a, b) == ["prune.keep_rates"]
    assert differing_keys(a, {**a, "seed": 5}) == []
