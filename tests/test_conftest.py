"""The test processes' own rules (tests/conftest.py)."""

from pathlib import Path

import pytest

from tests.conftest import claim_for_one_process


def test_only_one_test_process_may_change_the_shared_smoke_repo(tmp_path: Path) -> None:
    claim = tmp_path / "changed-by"
    claim_for_one_process(claim, "gw0")
    claim_for_one_process(claim, "gw0")  # the same process again
    with pytest.raises(pytest.fail.Exception, match=r"two test processes \(gw0 and gw1\)"):
        claim_for_one_process(claim, "gw1")
