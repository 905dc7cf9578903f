"""The batch every model takes and every reader yields."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


@dataclass
class Batch(Pipelineable):
    """One mini-batch of B rows.

    dense:     B x F_dense float32 dense features.
    sparse:    KeyedJaggedTensor, keys = ``DatasetSpec.sparse_names`` (IDs already mapped into each
               table's vocab_size); a single-valued feature has length 1 per row, a multi-valued
               one 0..max_len::

                              row0        row1
                   user_age   [3]         [5]
                   hist_items [7, 9, 2]   []

    labels:    B float32 in {0, 1}.
    user_ids:  B int64 raw user IDs (GAUC groups by them).
    item_ids:  B int64 item IDs, indices into the item table (SID lookup, tail-item metrics).
    sid:       None on raw batches. After ``SidTable.transform``: a KeyedJaggedTensor holding only the
               semantic-ID features ``<f>_sid<k>`` that replace the item-valued features of ``sparse``,
               so the (replicated) SID codebook collection gets exactly the keys it serves.
    """

    dense: torch.Tensor
    sparse: KeyedJaggedTensor
    labels: torch.Tensor
    user_ids: torch.Tensor
    item_ids: torch.Tensor
    sid: KeyedJaggedTensor | None = None

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            dense=self.dense.to(device=device, non_blocking=non_blocking),
            sparse=self.sparse.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            user_ids=self.user_ids.to(device=device, non_blocking=non_blocking),
            item_ids=self.item_ids.to(device=device, non_blocking=non_blocking),
            sid=None if self.sid is None else self.sid.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.dense.record_stream(stream)
        self.sparse.record_stream(stream)
        self.labels.record_stream(stream)
        self.user_ids.record_stream(stream)
        self.item_ids.record_stream(stream)
        if self.sid is not None:
            self.sid.record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(
            dense=self.dense.pin_memory(),
            sparse=self.sparse.pin_memory(),
            labels=self.labels.pin_memory(),
            user_ids=self.user_ids.pin_memory(),
            item_ids=self.item_ids.pin_memory(),
            sid=None if self.sid is None else self.sid.pin_memory(),
        )
