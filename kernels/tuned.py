"""Launch configurations chosen by measurement, per GPU architecture, as plain tables.

The launchers (:func:`mtl_fast.kernels.gram.gram_config`,
:func:`mtl_fast.kernels.combine.combine_config`) ask :func:`gram_entry` / :func:`combine_entry`
for the row that matches a call's (T, D, dtype) on the device's compute capability and fall back
to their heuristic when there is none (another GPU, or the interpreter). Nothing here is
autotuned at run time: a lookup is a few comparisons on the host, so it is safe inside a
CUDA-graph capture and costs no launch.

The tables are written from ``benchmarks/tune_kernels.py`` (which times every candidate on the
device, medians of CUDA-event timings over rotating inputs, and prints rows in this format);
``benchmarks/results/tune-<gpu>-<date>.json`` keeps the measurements behind each row.

Row semantics: the first row whose ``t_max ≥ T``, ``d_max ≥ D`` and dtype class (``"fp32"`` or
``"16bit"``) match is used.

A table can also be supplied without editing this file: the environment variable
``MTL_FAST_KERNEL_TABLE`` names a JSON file (``{"capability": [9, 0], "gram": [rows...],
"combine": [rows...]}``, each row a dict of the entry's fields, as ``tune_kernels.py --table``
writes it, or the sweep's results JSON, whose ``proposed_table`` is used) that replaces the
built-in rows for that capability when this module is imported.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields

import torch

#: Stand-in for "no upper bound" in a bucket.
ANY = 1 << 62


@dataclass(frozen=True)
class GramEntry:
    """One row of a Gram table: the launch parameters for a (T, D, dtype) bucket.

    Attributes:
        t_max, d_max: the bucket's inclusive upper bounds on T and D.
        dtype: ``"fp32"`` or ``"16bit"`` (bf16 and fp16 share a row).
        broadcast: the small-T path (elementwise products, no ``tl.dot``).
        block_d, num_warps, num_stages: kernel parameters.
        programs_per_sm: grid size target of the D split (programs per multiprocessor).
        precision: ``tl.dot`` input precision on the dot path: ``"ieee"`` (fp32 FMAs), or
            ``"tf32x3"`` (three TF32 tensor-core products per fp32 product, error close to
            fp32's) where measured faster and within the accuracy gate.
    """

    t_max: int
    d_max: int
    dtype: str
    broadcast: bool
    block_d: int
    num_warps: int
    num_stages: int
    programs_per_sm: int
    precision: str = "ieee"


@dataclass(frozen=True)
class CombineEntry:
    """One row of a combine table (see :class:`GramEntry` for the bucket fields)."""

    t_max: int
    d_max: int
    dtype: str
    block_d: int
    num_warps: int


#: Gram rows by compute capability (major, minor). Empty until measured on that architecture.
GRAM_TABLES: dict[tuple[int, int], tuple[GramEntry, ...]] = {}

#: Combine rows by compute capability.
#: sm_90 (H200, 2026-12-04, ``benchmarks/results/tune-nvidia-h200-2026-12-04-run1.json``): time
#: at D = 1.6·10⁷; at T ≥ 8 every candidate is within 5% of the copy-bandwidth floor, at T = 2
#: the rows are too short for the launch to fill the GPU (~2× the floor, 93–95 µs).
COMBINE_TABLES: dict[tuple[int, int], tuple[CombineEntry, ...]] = {
    (9, 0): (
        CombineEntry(t_max=2, d_max=ANY, dtype="fp32", block_d=2048, num_warps=8),
        CombineEntry(t_max=8, d_max=ANY, dtype="fp32", block_d=512, num_warps=8),
        CombineEntry(t_max=ANY, d_max=ANY, dtype="fp32", block_d=4096, num_warps=8),
        CombineEntry(t_max=2, d_max=ANY, dtype="16bit", block_d=4096, num_warps=8),
        CombineEntry(t_max=8, d_max=ANY, dtype="16bit", block_d=4096, num_warps=2),
        CombineEntry(t_max=ANY, d_max=ANY, dtype="16bit", block_d=2048, num_warps=8),
    ),
}


#: Environment variable naming a JSON table that replaces the built-in rows of its capability.
TABLE_ENV = "MTL_FAST_KERNEL_TABLE"


def load_table(path: str) -> tuple[int, int]:
    """Install the rows of a JSON table file (see the module docstring); returns its capability.

    Raises:
        ValueError: the file is not a table (missing keys, unknown fields, bad bounds).
    """
    with open(path) as f:
        doc = json.load(f)
    if isinstance(doc, dict) and "proposed_table" in doc:  # a tune_kernels.py results file
        doc = doc["proposed_table"]
    try:
        cap = (int(doc["capability"][0]), int(doc["capability"][1]))
        gram = tuple(_entry(GramEntry, row) for row in doc.get("gram", ()))
        combine = tuple(_entry(CombineEntry, row) for row in doc.get("combine", ()))
    except (KeyError, TypeError, IndexError) as exc:
        raise ValueError(f"{path} is not a kernel table: {exc!r}") from exc
    if gram:
        GRAM_TABLES[cap] = gram
    if combine:
        COMBINE_TABLES[cap] = combine
    return cap


def _entry(cls, row: dict):
    names = {f.name for f in fields(cls)}
    unknown = set(row) - names
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {sorted(unknown)}")
    row = {k: (ANY if v is None else v) for k, v in row.items()}
    entry = cls(**row)
    if entry.dtype not in ("fp32", "16bit") or entry.t_max < 1 or entry.d_max < 1:
        raise ValueError(f"bad table row {row}")
    return entry


if os.environ.get(TABLE_ENV):
    load_table(os.environ[TABLE_ENV])


def dtype_class(dtype: torch.dtype) -> str:
    """``"fp32"`` or ``"16bit"``: the dtype key of the tables."""
    return "16bit" if torch.finfo(dtype).bits == 16 else "fp32"


def capability(device: torch.device) -> tuple[int, int] | None:
    """The CUDA compute capability of ``device``; ``None`` for a non-CUDA device, or where CUDA
    is not available (ahead-of-time compilation for a GPU target on a machine without one)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _capability(index)


_capabilities: dict[int, tuple[int, int]] = {}


def _capability(index: int) -> tuple[int, int]:
    cap = _capabilities.get(index)
    if cap is None:
        major, minor = torch.cuda.get_device_capability(index)
        cap = _capabilities[index] = (major, minor)
    return cap


def _find(rows, T: int, D: int, dtype: torch.dtype):
    key = dtype_class(dtype)
    for row in rows:
        if row.dtype == key and T <= row.t_max and D <= row.d_max:
            return row
    return None


def gram_entry(T: int, D: int, dtype: torch.dtype, device: torch.device) -> GramEntry | None:
    """The measured Gram configuration for this call, or ``None`` (use the heuristic)."""
    cap = capability(device)
    if cap is None:
        return None
    return _find(GRAM_TABLES.get(cap, ()), T, D, dtype)


def combine_entry(T: int, D: int, dtype: torch.dtype, device: torch.device) -> CombineEntry | None:
    """The measured combine configuration for this call, or ``None`` (use the heuristic)."""
    cap = capability(device)
    if cap is None:
        return None
    return _find(COMBINE_TABLES.get(cap, ()), T, D, dtype)
