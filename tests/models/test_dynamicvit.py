"""DynamicViT: equal to the unpruned model at all-ones decisions, training path = inference path."""

from __future__ import annotations

import copy

import pytest
import torch

from maskprune.models.dynamicvit import make_dynamicvit, policy_softmax
from tests.models.tiny import tiny


def test_dynamicvit_with_all_ones_decisions_equals_the_unpruned_model() -> None:
    model = tiny()
    x = torch.randn(3, 1, 28, 28)
    expected = model(x)
    dyn = make_dynamicvit(copy.deepcopy(model), (1, 3, 4), keep_rate=0.7).train()
    dyn.draw_decisions = lambda log_probs: torch.ones_like(log_probs[..., :1])
    logits, tokens, policy, decisions = dyn(x, return_policy=True)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)  # eps of the policy softmax only
    assert policy.shape == (3, 49, 1) and [d.shape for d in decisions] == [torch.Size([3, 49])] * 3


def test_dynamicvit_masked_training_path_equals_physical_inference_path() -> None:
    dyn = make_dynamicvit(tiny(), (1, 3, 4), keep_rate=0.7)
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        physical = dyn.eval()(x)
        counts = iter([34, 24, 16])  # floor(49 * .7), floor(49 * .49), floor(49 * .343)

        def same_as_inference(log_probs: torch.Tensor) -> torch.Tensor:
            # keep the top-k scores among the tokens still alive, as inference does
            alive = dyn_policy[0] if dyn_policy else torch.ones_like(log_probs[..., :1])
            score = log_probs[..., 0].masked_fill(alive[..., 0] == 0, -torch.inf)
            top = score.topk(next(counts), dim=1).indices
            decision = torch.zeros_like(log_probs[..., :1]).scatter(1, top.unsqueeze(-1), 1.0)
            dyn_policy[:] = [decision]
            return decision

        dyn_policy: list[torch.Tensor] = []
        dyn.train().draw_decisions = same_as_inference
        masked, _, policy, _ = dyn(x, return_policy=True)
    assert policy.sum(dim=1).flatten().tolist() == [16.0] * 4
    torch.testing.assert_close(masked, physical, atol=1e-4, rtol=1e-4)


def test_dynamicvit_inference_keeps_r_powers_of_the_patches() -> None:
    dyn = make_dynamicvit(tiny(), (1, 3, 4), keep_rate=0.7).eval()
    out = dyn.forward_tokens(torch.randn(2, 1, 28, 28), collect_block_tokens=True)
    assert [t.shape[1] for t in out.block_tokens] == [50, 35, 35, 25, 17, 17]
    assert sorted(out.kept_patches) == [1, 3, 4]
    first, last = out.kept_patches[1][0].tolist(), out.kept_patches[4][0].tolist()
    assert set(last) <= set(first) and len(set(first)) == 34  # later stages choose among survivors


def test_policy_softmax_ignores_dropped_keys_but_keeps_the_diagonal() -> None:
    logits = torch.zeros(1, 1, 3, 3)
    policy = torch.tensor([[[1.0], [0.0], [1.0]]])
    weights = policy_softmax(logits, policy)[0, 0]
    eps = 1e-6
    # row 0 sees keys 0 and 2: (1 + eps/3) / (2 + eps); row 1 also sees itself
    assert weights[0].tolist() == pytest.approx(
        [(1 + eps / 3) / (2 + eps), eps / 3 / (2 + eps), (1 + eps / 3) / (2 + eps)]
    )
    assert weights[1].tolist() == pytest.approx([1 / 3] * 3, abs=1e-6)


def test_a_dominant_dropped_key_gives_the_policy_a_bounded_gradient() -> None:
    # keys (kept 0, dropped 60, kept 0) for every query: the paper's shift by 60 would underflow both
    # kept weights (e^-60), leave a row sum of ~eps and a policy gradient of ~1/eps
    logits = torch.tensor([0.0, 60.0, 0.0]).expand(1, 1, 3, 3)
    policy = torch.tensor([[[1.0], [0.0], [1.0]]], requires_grad=True)
    row = policy_softmax(logits, policy)[0, 0, 0]
    assert row.tolist() == pytest.approx([0.5, 0.0, 0.5], abs=1e-6)  # the softmax over the kept keys
    row[0].backward()
    # w0 = e^0 / (1 + p1 * e^0 + p2): the dropped key's weight is capped at the best kept key's (e^0),
    # and a token always sees itself (no gradient to p0); so d w0 / d p1 = d w0 / d p2 = -1 / 2^2
    assert policy.grad[0, :, 0].tolist() == pytest.approx([0.0, -0.25, -0.25], abs=1e-5)
