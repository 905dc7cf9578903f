"""Orthogonal rotation: R stays orthogonal under training, the diversity term, alternating optimisation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from store.models.config import ModelConfig
from store.models.rotation import OrthogonalRotation, pairwise_distance_sum
from store.models.zoo import build_model, rotation_parameters
from tests.test_sid import tiny_batch, tiny_sids, tiny_spec


def _orthogonality_error(r: torch.Tensor) -> float:
    eye = torch.eye(r.shape[-1], dtype=r.dtype)
    return float(torch.linalg.matrix_norm(r.transpose(-1, -2) @ r - eye).max())


def _loss(model, batch):
    out = model(batch)
    return F.binary_cross_entropy_with_logits(out.logits, batch.labels) + sum(out.aux_losses.values())


def test_rotations_stay_orthogonal_while_training_store():
    torch.manual_seed(0)
    spec, sids = tiny_spec(), tiny_sids()
    model = build_model("store", spec, ModelConfig(), sids)
    batch = sids.transform(tiny_batch(spec), spec)
    before = model.rotation.rotations.detach().clone()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    after = model.rotation.rotations.detach()
    assert (after - before).abs().max() > 1e-2  # R really moved
    assert _orthogonality_error(after) < 1e-5
    assert _orthogonality_error(after.float().double()) < 1e-5  # also as used, in float32


def test_pairwise_distance_grows_with_the_angle_between_rotations():
    def plane_rotation(theta: float) -> torch.Tensor:
        r = torch.eye(4)
        r[:2, :2] = torch.tensor([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        return r

    distances = [
        float(pairwise_distance_sum(torch.stack([torch.eye(4), plane_rotation(a)])))
        for a in (0, 0.5, 1, 2, 3)
    ]
    assert distances[0] == 0.0
    assert all(a < b for a, b in zip(distances, distances[1:]))
    # ||I - R(theta)||_F^2 = 4 (1 - cos theta) for a rotation in one plane
    assert math.isclose(distances[2], 4 * (1 - math.cos(1)), rel_tol=1e-5)
    # sum over pairs i<j, not over ordered pairs
    three = torch.stack([torch.eye(4), plane_rotation(1), plane_rotation(2)])
    expected = 4 * (1 - math.cos(1)) * 2 + 4 * (1 - math.cos(2))
    assert math.isclose(float(pairwise_distance_sum(three)), expected, rel_tol=1e-5)


def test_minimising_the_diversity_loss_pushes_rotations_apart():
    torch.manual_seed(0)
    rot = OrthogonalRotation(block_dim=6, token_dim=4, num_rotations=3)
    lam = 0.1
    losses = []
    opt = torch.optim.Adam(rot.rotation_parameters(), lr=0.05)
    for _ in range(30):
        loss = -lam * rot.diversity()
        losses.append(loss.item())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert losses[-1] < losses[0] - 1.0  # the spread sum ||R_i - R_j||^2 grew
    assert _orthogonality_error(rot.rotations.detach()) < 1e-5


def test_store_reports_weighted_diversity():
    spec, sids = tiny_spec(), tiny_sids()
    cfg = ModelConfig(diversity_lambda=0.3)
    model = build_model("store", spec, cfg, sids)
    out = model(sids.transform(tiny_batch(spec), spec))
    expected = -0.3 * pairwise_distance_sum(model.rotation.rotations).float()
    torch.testing.assert_close(out.aux_losses["diversity"], expected)
    assert set(out.aux_losses) == {"diversity"}


def test_free_rotations_get_an_orthogonality_penalty_that_training_reduces():
    torch.manual_seed(0)
    spec, sids = tiny_spec(), tiny_sids()
    cfg = ModelConfig(orthogonal_parametrization=False, diversity_lambda=0.0, orthogonality_weight=1.0)
    model = build_model("store", spec, cfg, sids)
    with torch.no_grad():
        model.rotation.matrices.weight.mul_(1.5)  # start away from orthogonal
    batch = sids.transform(tiny_batch(spec), spec)
    first = model(batch).aux_losses["orthogonality"].item()
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(30):
        opt.zero_grad()
        _loss(model, batch).backward()
        opt.step()
    assert first > 1.0 and model(batch).aux_losses["orthogonality"].item() < 0.2 * first


def test_alternating_optimisation_touches_only_its_own_parameters():
    torch.manual_seed(0)
    spec, sids = tiny_spec(), tiny_sids()
    model = build_model("store", spec, ModelConfig(), sids)
    batch = sids.transform(tiny_batch(spec), spec)
    rot_ids = {id(p) for p in rotation_parameters(model)}
    assert rot_ids and rot_ids < {id(p) for p in model.parameters()}
    net = [p for p in model.parameters() if id(p) not in rot_ids]
    opt_r = torch.optim.Adam(rotation_parameters(model), lr=0.05)
    opt_net = torch.optim.Adam(net, lr=0.05)
    for opt, moved, frozen in (
        (opt_r, rotation_parameters(model), net),
        (opt_net, net, rotation_parameters(model)),
    ):
        snapshot_moved = [p.detach().clone() for p in moved]
        snapshot_frozen = [p.detach().clone() for p in frozen]
        model.zero_grad()
        _loss(model, batch).backward()
        opt.step()
        assert any(not torch.equal(a, p) for a, p in zip(snapshot_moved, moved))
        assert all(torch.equal(a, p) for a, p in zip(snapshot_frozen, frozen))
    assert rotation_parameters(build_model("id", spec, ModelConfig(), sids))  # same architecture
    for name in ("dnn", "deepfm", "dcn", "autoint", "rankmixer", "onetrans"):
        assert rotation_parameters(build_model(name, spec, ModelConfig(), sids)) == []
    assert rotation_parameters(build_model("store", spec, ModelConfig(rotation=False), sids)) == []
