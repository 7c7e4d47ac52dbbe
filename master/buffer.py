"""The master's receive buffer: coded results are written into it chunk by chunk and decoded in one gemv.

One preallocated ``(n_messages, d + 1)`` array (the gradient's d elements and, last, the loss), zeros at the
start so rows never written hold finite values. Rows are handed out per iteration in arrival order; the
decode is ``np.dot(weights, buffer[:rows])`` with weight 0 on every row the decoding does not use. The
coordinator resets the buffer only after the previous iteration's decode has read it, so results of one
iteration never mix into another's decode.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from flexgc.common import wire
from flexgc.common.decoder import Decoding
from flexgc.v1 import coordinator_pb2 as pb


class ReceiveBuffer:
    """Rows of the current iteration's coded messages, each filled by one connection at a time."""

    def __init__(self, n_messages: int, vector_len: int, dtype: np.dtype) -> None:
        self.array = np.zeros((n_messages, vector_len), dtype=dtype)
        self._row_of: dict[int, int] = {}   # message id -> row
        self._filled: dict[int, int] = {}   # message id -> elements written
        self._writer: dict[int, int] = {}   # message id -> epoch of the connection filling its row

    def reset(self) -> None:
        """Forget every row: a new iteration starts (its previous decode has read the buffer)."""
        self._row_of.clear()
        self._filled.clear()
        self._writer.clear()

    def writer(self, message_id: int) -> int | None:
        """The epoch of the connection that is filling (or filled) this message's row."""
        return self._writer.get(message_id)

    def restart(self, message_id: int, epoch: int) -> None:
        """Connection `epoch` (re)starts this message from its first element; its row is kept if it had one."""
        if message_id not in self._row_of:
            self._row_of[message_id] = len(self._row_of)
        self._filled[message_id] = 0
        self._writer[message_id] = epoch

    def accept(self, message_id: int, chunk: pb.ResultChunk) -> int:
        """Write a validated chunk after what the row holds; returns the bytes written (WireError if it
        does not fit, is truncated or holds NaN/Inf: then nothing is written)."""
        row = self.array[self._row_of[message_id]]
        before = self._filled[message_id]
        self._filled[message_id] = wire.accept_chunk(row, before, chunk)
        return (self._filled[message_id] - before) * row.itemsize

    def decode(self, decoding: Decoding) -> Callable[[], np.ndarray]:
        """The decode of `decoding` as a call that may run off the event loop: weights are mapped to rows
        now; the call computes g = sum_i w_i v_i, (d + 1,) in the buffer's dtype."""
        weights = np.zeros(len(self._row_of))
        for mid, w in zip(decoding.messages, decoding.weights):
            weights[self._row_of[mid]] = w
        rows = self.array[:len(self._row_of)]
        return lambda: combine_rows(weights, rows)

    @property
    def used_elements(self) -> int:
        """Elements in the rows handed out so far (what a decode reads)."""
        return len(self._row_of) * self.array.shape[1]


def combine_rows(weights: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """The decode g = sum_i w_i v_i: weights (m,), rows (m, d) -> (d,) in the rows' dtype (one BLAS gemv).
    The trainer widens it to float64 in the pass that scales it anyway, so the decode pays no separate
    cast pass (bitwise the same update as casting here)."""
    return np.dot(weights.astype(rows.dtype), rows)
