"""STORE's orthogonal rotation of the static-feature block.

Shape letters: B batch, G feature groups, D token width, M = G * D block width, R rotations.

Low-cardinality static features are grouped by meaning (user, context, item category ...); each
group's embeddings go through a shallow MLP to one D-vector, and the concatenation is the block
C (B, M). R orthogonal matrices R_i (M, M) rotate it: O_i = C R_i. Each rotated block is projected
back to one token by a linear map W (M -> D) SHARED by all rotations, so the R tokens differ only by
their rotation: that is what the diversity regulariser spreads apart,

    diversity = -lambda * sum_{i<j} ||R_i - R_j||_F^2      (lambda = 0.1 by default).

R stays exactly orthogonal through ``torch.nn.utils.parametrizations.orthogonal`` (the optimiser
updates an unconstrained parameter mapped onto the orthogonal group). With
``orthogonal=False`` R is a free matrix and ``orthogonality_penalty`` pulls it towards orthogonal.
``rotation_parameters(model)`` lists the parameters of every R in a model (those of each
``OrthogonalRotation``), so a trainer can alternate between optimising R and the rest of the network,
as the paper does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import orthogonal as orthogonal_parametrization


class _Matrices(nn.Module):
    """Holds R as ``weight`` (R, M, M) so torch's orthogonal parametrization can wrap it."""

    def __init__(self, num: int, dim: int) -> None:
        super().__init__()
        # Distinct random orthogonal starts: identical R_i would make identical tokens. float64: in
        # float32 the parametrization drifts ~1e-5 from orthogonal once R has moved far.
        start = [nn.init.orthogonal_(torch.empty(dim, dim, dtype=torch.float64)) for _ in range(num)]
        self.weight = nn.Parameter(torch.stack(start))


class OrthogonalRotation(nn.Module):
    """O_i = C R_i for i < R, then a shared projection to the token width.

    forward(c (B, M)) -> tokens (B, R, D).
    """

    def __init__(self, block_dim: int, token_dim: int, num_rotations: int, orthogonal: bool = True) -> None:
        super().__init__()
        self.matrices = _Matrices(num_rotations, block_dim)
        self.orthogonal = orthogonal
        if orthogonal:
            # Cayley map (one linear solve) rather than the default matrix exponential: exactly as
            # orthogonal, and the exponential was >60% of a CPU training step of STORE/ID.
            orthogonal_parametrization(self.matrices, "weight", orthogonal_map="cayley")
        self.proj = nn.Linear(block_dim, token_dim)

    @property
    def rotations(self) -> torch.Tensor:
        """R: (R, M, M) float64, orthogonal when ``orthogonal``."""
        return self.matrices.weight

    def rotation_parameters(self) -> list[nn.Parameter]:
        """The parameters that define R (the unconstrained ones under the parametrization)."""
        return list(self.matrices.parameters())

    def forward(self, c: torch.Tensor) -> torch.Tensor:
        rotated = torch.einsum("bm,rmn->brn", c, self.rotations.to(c.dtype))  # (B, R, M)
        return self.proj(rotated)

    def diversity(self) -> torch.Tensor:
        """sum_{i<j} ||R_i - R_j||_F^2 (unweighted, >= 0); the regulariser is -lambda times this."""
        return pairwise_distance_sum(self.rotations).float()

    def orthogonality_penalty(self) -> torch.Tensor:
        """sum_i ||R_i^T R_i - I||_F^2: 0 under the parametrization, a penalty for free R."""
        r = self.rotations
        eye = torch.eye(r.shape[-1], device=r.device, dtype=r.dtype)
        return ((r.transpose(-1, -2) @ r - eye) ** 2).sum().float()


def pairwise_distance_sum(r: torch.Tensor) -> torch.Tensor:
    """sum_{i<j} ||R_i - R_j||_F^2 for R: (R, M, M), via ||a-b||^2 summed over all ordered pairs / 2."""
    flat = r.flatten(1)
    return (flat[:, None, :] - flat[None, :, :]).pow(2).sum() / 2


def rotation_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters that define R in every ``OrthogonalRotation`` inside ``model`` (empty when it has
    none), in module order: what the trainer's rotation optimizer steps."""
    return [p for m in model.modules() if isinstance(m, OrthogonalRotation) for p in m.rotation_parameters()]
