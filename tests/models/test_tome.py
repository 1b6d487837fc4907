"""ToMe over the token-aware ViT: r = 0 is the model, r tokens merged per block, matching by hand,
per-block schedules checked by hand, and the schedule matched to the pruned models' GMACs."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch

from maskprune.config import ModelSpec
from maskprune.errors import MaskpruneError
from maskprune.measure import gmacs
from maskprune.models.pruned import PruningSpec, make_pruned, pruning_blocks
from maskprune.models.tome import (
    apply_tome,
    bipartite_soft_matching,
    check_tome_schedule,
    max_tome_r,
    merge_weighted,
    remove_tome,
    tome_schedule_for,
    tome_schedules,
    tome_tokens,
)
from maskprune.models.vit import TokenViT, build_model
from maskprune.profile import deep_merge, read_profile
from tests.conftest import REPO
from tests.models.tiny import tiny


def test_tome_r0_equals_the_model_and_removal_restores_it() -> None:
    model = tiny()
    x = torch.randn(2, 1, 28, 28)
    expected = model(x)
    tome = apply_tome(model, 0)
    torch.testing.assert_close(tome(x), expected)
    tome.tome_schedule = [3] * 6
    assert not torch.allclose(tome(x), expected)
    plain = remove_tome(tome)
    assert type(plain) is TokenViT and not hasattr(plain, "tome_schedule")
    torch.testing.assert_close(plain(x), expected)


def test_tome_removes_exactly_r_tokens_per_block() -> None:
    tome = apply_tome(tiny(), 4)
    out = tome.forward_tokens(torch.randn(2, 1, 28, 28), collect_block_tokens=True)
    assert [t.shape[1] for t in out.block_tokens] == [46, 42, 38, 34, 30, 26]
    assert out.size.sum(dim=1).flatten().tolist() == [50.0, 50.0]  # every input token is accounted for
    assert max_tome_r(49, 6) == 7  # 50 -> 43 -> ... -> 8; r = 8 cannot merge 8 of 10 tokens in block 5
    with pytest.raises(MaskpruneError, match=r"ToMe r=8 must lie in \[0, 7\]"):
        apply_tome(tiny(), 8)


def test_bipartite_matching_merges_the_most_similar_pair_by_size() -> None:
    # tokens: [CLS], a, b, c, d; A = {CLS, b, d}, B = {a, c}; b is nearly parallel to a
    metric = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [0.1, 1.0], [1.0, 0.0], [-1.0, 0.0]]])
    merge = bipartite_soft_matching(metric, r=1)
    x = torch.tensor([[[0.0], [2.0], [4.0], [6.0], [8.0]]])
    size = torch.tensor([[[1.0], [1.0], [3.0], [1.0], [1.0]]])
    merged, new_size = merge_weighted(merge, x, size)
    # b (size 3) merges into a (size 1): (2 * 1 + 4 * 3) / 4 = 3.5; order: unmerged A, then B
    assert merged.flatten().tolist() == [0.0, 8.0, 3.5, 6.0]
    assert new_size.flatten().tolist() == [1.0, 1.0, 4.0, 1.0]


def test_tome_schedules_are_checked_block_by_block() -> None:
    assert check_tome_schedule(3, 49, 6) == [3] * 6
    # the most merging: each block merges (t - 1) // 2 of its t tokens, down to [CLS] + 1 patch
    assert check_tome_schedule([24, 12, 6, 3, 2, 1], 49, 6) == [24, 12, 6, 3, 2, 1]
    assert tome_tokens([24, 12, 6, 3, 2, 1], 49) == [50, 26, 14, 8, 5, 3, 2]
    bad = {
        (1, 2): r"ToMe schedule \[1, 2\] has 2 entries for 6 blocks; give one r per block",
        (1, -1, 0, 0, 0, 0): r"block\(s\) \[1\] have r < 0",
        (25, 0, 0, 0, 0, 0): r"merges 25 of the 50 tokens entering block 0: more than 24 would merge \[CLS\]",
        (24, 12, 6, 3, 2, 2): r"merges 2 of the 3 tokens entering block 5: more than 1 .* leave no patch token",
        (7, 7, 7, 7, 7, 8): r"merges 8 of the 15 tokens entering block 5: more than 7",
    }
    for schedule, message in bad.items():
        with pytest.raises(MaskpruneError, match=message):
            apply_tome(tiny(), list(schedule))
    tome = apply_tome(tiny(), [8, 8, 8, 8, 8, 4])  # r = 8 in every block is too many; lowered in the last
    out = tome.forward_tokens(torch.randn(2, 1, 28, 28), collect_block_tokens=True)
    assert [t.shape[1] for t in out.block_tokens] == [42, 34, 26, 18, 10, 6]
    assert out.size.sum(dim=1).flatten().tolist() == [50.0, 50.0]


def test_an_int_and_the_same_r_in_every_block_give_the_same_model() -> None:
    x = torch.randn(2, 1, 28, 28)
    as_int, as_list = apply_tome(tiny(), 4), apply_tome(tiny(), [4] * 6)
    assert as_int.tome_schedule == as_list.tome_schedule == [4] * 6
    torch.testing.assert_close(as_int(x), as_list(x), rtol=0, atol=0)
    assert not torch.allclose(apply_tome(tiny(), [5, 4, 4, 4, 4, 4])(x), as_int(x))


@pytest.mark.parametrize(("num_patches", "depth"), [(49, 6), (196, 12)])
def test_searched_schedules_merge_ever_more_tokens(num_patches: int, depth: int) -> None:
    found = tome_schedules(num_patches, depth)
    # first ToMe's constant r = 0, then r = 1 started one block at a time
    assert found[: depth + 1] == [[1] * k + [0] * (depth - k) for k in range(depth + 1)]
    tokens = [tome_tokens(s, num_patches) for s in found]
    assert tokens[-1][1:] == [t - (t - 1) // 2 for t in tokens[-1][:-1]]  # all each block can merge
    for schedule in found:
        assert check_tome_schedule(schedule, num_patches, depth) == schedule
    for before, after in itertools.pairwise(tokens):  # no block sees more tokens, some block fewer
        assert before != after and all(b >= a for b, a in zip(before, after, strict=True))


def _profile_setups() -> dict[str, tuple[ModelSpec, tuple[int, ...], bool]]:
    """Per profile: the student spec, the pruning blocks' locations and EViT's fuse_token, as prune builds them."""
    setups = {}
    for name in ("smoke", "cpu"):
        tree = read_profile("cpu", REPO)
        if name != "cpu":
            tree = deep_merge(tree, read_profile(name, REPO))
        prune = tree["prune"]
        setups[name] = (
            ModelSpec.model_validate(tree["models"]["student"]),
            tuple(prune["locations"]),
            prune["evit"]["fuse_token"],
        )
    return setups


def test_the_found_schedule_matches_every_pruned_models_gmacs_within_3_percent() -> None:
    gaps = {}
    for setup in set(_profile_setups().values()):  # the profiles share one student today: measured once
        spec, locations, fuse_token = setup
        torch.manual_seed(0)
        base = build_model(spec, num_classes=10, in_chans=1).eval()
        example = torch.randn(1, 1, spec.img_size, spec.img_size)
        blocks = pruning_blocks(len(base.blocks), locations)
        for method in ("evit", "dynamicvit"):
            for keep in (0.7, 0.5, 0.25):
                pruning = PruningSpec(method, keep, blocks, fuse_token if method == "evit" else False)
                target = gmacs(make_pruned(copy.deepcopy(base), pruning), example)
                schedule = tome_schedule_for(base, target, example)
                gaps[spec.name, method, keep] = gmacs(apply_tome(copy.deepcopy(base), schedule), example) / target - 1
    assert all(abs(gap) < 0.03 for gap in gaps.values()), gaps
    with pytest.raises(MaskpruneError, match="target GMACs 0.0 must be > 0"):
        tome_schedule_for(tiny(), 0.0, torch.randn(1, 1, 28, 28))
