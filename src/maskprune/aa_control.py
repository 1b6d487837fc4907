"""The A/A control of a throughput ratio: when is a measured speed-up noise?

Every throughput ratio is timed beside its reference timed against itself in the same rotation
(`measure.paired_throughput`). That A/A ratio reads 1 when nothing differs; its distance from 1 is
the noise floor of the ratio it controls.
"""

from __future__ import annotations

AA_TOLERANCE = 0.05  # an A/A ratio further than this from 1 makes the ratio it controls noise


def aa_noisy(aa_ratio: float) -> bool:
    """Whether an A/A control ratio lies more than AA_TOLERANCE from 1."""
    return abs(aa_ratio - 1.0) > AA_TOLERANCE
