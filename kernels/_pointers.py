"""How the kernels reach the T task rows without stacking them: a base tensor plus a pointer table.

The task gradients handed to the Gram and combine kernels are T separate tensors (what autograd
gives a Function's backward), possibly at unrelated addresses. Copying them into one [T, D] tensor
would cost a full extra pass over J and a T×D temporary, so instead the kernels read row ``t``
through ``table[t]``, the int64 address of its first element (``data_ptr()``, which already
includes the view's storage offset). Inside a kernel the address is cast back to a pointer of the
rows' element type.

When the caller passed one [T, D] tensor (``TaskRows.stacked``) no table is needed: row ``t``
starts at ``base + t * row_stride``, and Triton's usual argument specialisation sees the
alignment of ``base`` and of ``row_stride``.

Building the table never synchronises with the device:

* On CUDA the addresses are written into *pinned* host memory and copied with
  ``non_blocking=True`` on the current stream, so the copy is ordered before the kernel that reads
  the table and the host does not wait for it. PyTorch's caching host allocator records an event
  on the pinned block when the copy is enqueued and hands the block out again only after that
  event completed, so the staging buffer may be dropped as soon as the copy is enqueued.
* On the CPU (the Triton interpreter) the table is an ordinary CPU tensor.

The device tables of recent calls are cached by (device, addresses), so a call that sees the
same addresses again on the same stream (typical when the caching allocator hands the gradients
the same blocks every step) issues no copy at all. This is also what makes the kernels
*capturable in a CUDA graph when the addresses are static*: during capture a table built by an
earlier eager call with the same addresses (the warm-up every capture needs anyway, e.g. for
Triton's JIT compilation) is reused — ``torch.cuda.graph`` synchronises the device before capture,
so its copy has completed — and it is then kept alive for the life of the process, because the
graph reads it on every replay. Without such a warm-up, the pinned copy itself is captured (a
memcpy node reading the pinned buffer on every replay); that table and its pinned buffer are
likewise kept alive forever, but never reused, since their contents exist only once the graph
has replayed. Replaying a graph is only valid while the captured tensors keep their addresses,
which is the usual CUDA-graph contract.

The source rows are referenced by :class:`RowAccess` (``keepalive``) until the launcher has
enqueued its kernel; after that the caching device allocator's stream semantics protect them.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from mtl_fast._validation import TaskRows

#: How many recent device tables are cached for reuse (each holds T int64 values).
TABLE_CACHE_SIZE = 32

# (device index, addresses) -> (device table, stream id) of recent eager calls (LRU order).
_recent_tables: OrderedDict[tuple[Any, ...], tuple[Tensor, int]] = OrderedDict()
# Eagerly written tables that a captured CUDA graph reads: never freed, reusable by later captures.
_graph_tables: dict[tuple[Any, ...], Tensor] = {}
# (device table, pinned buffer) pairs whose copy was itself captured: the table's contents exist
# only once the graph has replayed, so they are kept alive but never reused.
_captured_copies: list[tuple[Tensor, Tensor]] = []


@dataclass(frozen=True)
class RowAccess:
    """Everything a kernel needs to address the T rows.

    Attributes:
        base: a tensor of the rows' dtype on their device. In stacked mode row ``t`` starts at
            ``base + t * row_stride``; in table mode it only supplies the element type.
        table: int64 [T] row addresses on the rows' device (table mode); ``base`` itself in
            stacked mode, where the kernels never read it.
        row_stride: elements between consecutive rows (stacked mode; 0 in table mode).
        use_table: read the row addresses from ``table``.
        row_align: the largest power of two (≤ 16) dividing every row's byte address in table mode,
            passed to the kernels as a ``tl.multiple_of`` hint so aligned rows get vector loads;
            1 in stacked mode (Triton specialises ``base`` and ``row_stride`` itself).
        keepalive: references that must outlive the launch (the rows, the pinned buffer).
    """

    base: Tensor
    table: Tensor
    row_stride: int
    use_table: bool
    row_align: int
    keepalive: tuple[Any, ...]


def _alignment(addresses: tuple[int, ...]) -> int:
    align = 16
    while align > 1 and any(a % align for a in addresses):
        align //= 2
    return align


def pointer_table(
    rows: tuple[Tensor, ...], addresses: tuple[int, ...] | None = None
) -> tuple[Tensor, tuple[Any, ...]]:
    """The int64 [T] table of the rows' addresses on their device, with no host synchronisation.

    Args:
        rows: the T row tensors (one device).
        addresses: their ``data_ptr()`` values when the caller already has them.

    Returns:
        (table, keepalive): ``keepalive`` holds the objects that must stay referenced until the
        kernel reading ``table`` is enqueued (the rows and, on CUDA, the pinned staging buffer).
    """
    device = rows[0].device
    if addresses is None:
        addresses = tuple(r.data_ptr() for r in rows)
    if device.type != "cuda":
        return torch.tensor(addresses, dtype=torch.int64, device=device), (rows,)

    key = (device.index, addresses)
    if torch.cuda.is_current_stream_capturing():
        table = _graph_tables.get(key)
        if table is None and key in _recent_tables:
            table = _recent_tables[key][0]
            _graph_tables[key] = table
        if table is not None:
            return table, (rows,)
        host = torch.tensor(addresses, dtype=torch.int64, pin_memory=True)
        table = host.to(device, non_blocking=True)
        _captured_copies.append((table, host))
        return table, (rows, host)

    stream = torch.cuda.current_stream(device).cuda_stream
    cached = _recent_tables.get(key)
    if cached is not None and cached[1] == stream:
        _recent_tables.move_to_end(key)
        return cached[0], (rows,)
    host = torch.tensor(addresses, dtype=torch.int64, pin_memory=True)
    table = host.to(device, non_blocking=True)
    _recent_tables[key] = (table, stream)
    _recent_tables.move_to_end(key)
    while len(_recent_tables) > TABLE_CACHE_SIZE:
        _recent_tables.popitem(last=False)
    return table, (rows, host)


def row_access(rows: TaskRows) -> RowAccess:
    """How the kernels address ``rows``: the caller's stacked tensor when there is one, else a
    pointer table (see the module docstring)."""
    stacked = rows.stacked
    if stacked is not None and stacked.dim() == 2 and stacked.stride(1) == 1:
        return RowAccess(
            base=stacked,
            table=stacked,
            row_stride=stacked.stride(0),
            use_table=False,
            row_align=1,
            keepalive=(stacked,),
        )
    addresses = tuple(r.data_ptr() for r in rows.rows)
    table, keepalive = pointer_table(rows.rows, addresses)
    return RowAccess(
        base=rows.rows[0],
        table=table,
        row_stride=0,
        use_table=True,
        row_align=_alignment(addresses),
        keepalive=keepalive,
    )
