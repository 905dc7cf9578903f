"""PEPNet baseline (Chang et al. 2023, "PEPNet: Parameter and Embedding Personalized Network for
Infusing with Personalized Prior Information", KDD): gates computed from prior features rescale the
embeddings (EPNet) and the input of every MLP layer (PPNet).

Shape letters: B batch, F fields (sparse features + one for the dense features), D embedding width,
E = F * D, P_d / P_p the domain / personal prior fields.

    Gate NU:  delta = 2 * sigmoid(W_2 ReLU(W_1 x + b_1) + b_2)      in (0, 2), 1 at the start
    EPNet:    delta_ep = GateNU([E(P_d), sg(E)])      (B, F): one gate per field, over its D values
              O_ep = delta_ep * E                     (B, F, D)
    PPNet:    delta_l = GateNU_l([E(P_p), sg(O_ep)])  (B, width of layer l's input)
              H_{l+1} = ReLU(Linear_l(delta_l * H_l)),  H_0 = O_ep flattened; the output layer ``out``
              takes delta_L * H_L

sg is stop-gradient: the gates read the embeddings without training them through the gate (the
paper's choice, so the gates personalise but do not distort the shared embeddings); the prior
fields' own embeddings are trained through the gates.

Which fields are prior (``PEPNetInputs``, decided by ``pepnet_inputs`` from the
spec): the paper's EPNet reads the *domain* (the scenario a request comes from) and PPNet the user,
item and author IDs. In a single-domain dataset the nearest thing to a domain is the request's
context, so P_d = the spec's "context" feature group (hour, weekday ...), and P_p = the user ID
feature, the "user" group (age, gender ...) and the target item. A prior list may be empty (a spec
without those groups): the gate then reads the stop-gradient embeddings alone.

Defaults: the paper's gate scale 2; each Gate NU's hidden layer is as wide as its output; the MLP is
``--model.mlp_dims``. The paper's multi-task towers are one tower here (one click label).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from data_pipeline.batch import Batch
from data_pipeline.spec import DatasetSpec
from store.models.flops import linear_model_flops
from store.models.inputs import field_inputs, parse_feature_groups
from store.models.layers import EMBEDDING_INIT_STD, FieldEmbedder, FieldInputs, ModelOutput
from store.models.registry import ModelSpec

if TYPE_CHECKING:
    from store.models.config import ModelConfig
    from store.sid import SidTable

GATE_SCALE = 2.0
"""gamma of Gate NU: delta = gamma * sigmoid(.), so an untrained gate (~0.5 * gamma) passes ~1."""


@dataclass
class PEPNetInputs:
    """The fields and which of them are the prior ones (``pepnet_inputs(spec)``)."""

    fields: FieldInputs
    """Every sparse feature's table and the dense features, as for the other baselines."""
    domain: tuple[str, ...]
    """EPNet's prior: sparse features describing the request's context (P_d)."""
    personal: tuple[str, ...]
    """PPNet's prior: sparse features naming the user and the item (P_p)."""


class GateNU(nn.Module):
    """forward(x (B, in_dim)) -> (B, out_dim) in (0, GATE_SCALE)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.hidden = nn.Linear(in_dim, out_dim)
        self.gate = nn.Linear(out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return GATE_SCALE * torch.sigmoid(self.gate(torch.relu(self.hidden(x))))


class PEPNet(nn.Module):
    """forward(batch) -> ModelOutput, logits (B,) = out(PPNet(EPNet(fields)))."""

    def __init__(self, inputs: PEPNetInputs, cfg: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.fields = FieldEmbedder(inputs.fields, cfg.embedding_dim, device)
        keys = self.fields.keys  # the sparse features in field order (the dense field comes last)
        unknown = [f for f in inputs.domain + inputs.personal if f not in keys]
        if unknown:
            raise ValueError(f"PEPNet prior features {unknown} are not sparse fields {keys}")
        self.domain = [keys.index(f) for f in inputs.domain]
        self.personal = [keys.index(f) for f in inputs.personal]
        d, f = cfg.embedding_dim, self.fields.num_fields
        self.epnet = GateNU((len(self.domain) + f) * d, f)
        widths = [f * d, *cfg.mlp_dims]  # the input width of every layer, the output layer's last
        self.ppnet = nn.ModuleList(GateNU((len(self.personal) + f) * d, w) for w in widths)
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(widths[:-1], widths[1:], strict=True))
        self.dropout = nn.Dropout(cfg.dropout)
        self.out = nn.Linear(widths[-1], 1)

    def forward(self, batch: Batch) -> ModelOutput:
        fields, _ = self.fields(batch)  # (B, F, D)
        # EPNet: one gate per field from the domain prior and the (frozen-through-the-gate) fields.
        domain = fields[:, self.domain].flatten(1)  # (B, P_d * D)
        delta_ep = self.epnet(torch.cat([domain, fields.detach().flatten(1)], dim=1))  # (B, F)
        o_ep = (delta_ep.unsqueeze(-1) * fields).flatten(1)  # (B, F * D)
        # PPNet: every layer's input rescaled by a gate from the personal prior.
        prior = torch.cat([fields[:, self.personal].flatten(1), o_ep.detach()], dim=1)  # (B, (P_p + F) * D)
        h = o_ep
        for gate, layer in zip(self.ppnet[:-1], self.layers, strict=True):
            h = self.dropout(torch.relu(layer(gate(prior) * h)))
        return ModelOutput(logits=self.out(self.ppnet[-1](prior) * h).squeeze(-1))


def pepnet_inputs(
    spec: DatasetSpec, feature_groups: str = "", init_std: float = EMBEDDING_INIT_STD
) -> PEPNetInputs:
    """PEPNet's fields and which are its prior ones: the domain prior is the "context" feature group,
    the personal prior the user-ID feature, the "user" group and the target item; groups from
    ``feature_groups`` (--model.feature_groups), else the spec's. Features that are not sparse
    features of the spec are skipped (e.g. a user ID kept only for GAUC)."""
    groups = parse_feature_groups(feature_groups) or spec.feature_groups
    unknown = [f for cols in groups.values() for f in cols if f not in spec.sparse_names]
    if feature_groups and unknown:
        raise ValueError(f"--model.feature_groups names unknown sparse features {unknown}")
    personal = [spec.user_id, *groups.get("user", []), spec.item_id]
    return PEPNetInputs(
        fields=field_inputs(spec, init_std),
        domain=tuple(f for f in groups.get("context", []) if f in spec.sparse_names),
        personal=tuple(dict.fromkeys(f for f in personal if f in spec.sparse_names)),  # unique, in order
    )


def build(spec: DatasetSpec, cfg: ModelConfig, sids: SidTable | None, device: torch.device | None) -> PEPNet:
    return PEPNet(pepnet_inputs(spec, cfg.feature_groups, cfg.embedding_init_std), cfg, device)


SPEC = ModelSpec("pepnet", build, flops=linear_model_flops)
