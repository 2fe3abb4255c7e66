"""QM9 offline: the molecules and the 11 targets from the ``qm9pack`` wheel, cached on disk as
arrays, and molecular graphs (atoms as nodes, a distance cut-off as edges) built once per
subset and cached too.

Data: Ramakrishnan et al. 2014 (QM9, 130,831 molecules with up to 29 atoms of H, C, N, O, F),
as shipped inside the MIT-licensed ``qm9pack`` wheel (``pip install "mtl_fast[qm9]"``). Only the
wheel's CSV files are read, with the standard library: importing ``qm9pack`` itself is not
needed (it imports ``pkg_resources``, which recent setuptools no longer provide).

Targets (:data:`TARGETS`): the 11 of Navon et al. 2022 (Nash-MTL) and Liu et al. 2023 (FAMO),
which follow Fey & Lenssen's PyTorch Geometric QM9 target indices 0, 1, 2, 3, 5, 6, 12, 13, 14,
15, 11: dipole moment μ, isotropic polarizability α, HOMO and LUMO energies, electronic spatial
extent ⟨R²⟩, zero-point vibrational energy, and the *atomization* energies U0, U, H, G (total
energy minus the isolated atoms' energies, Ramakrishnan et al. 2014's atom references), and
heat capacity c_v. The HOMO–LUMO gap is left out, as in those papers: it is LUMO − HOMO, a
linear function of two other targets. Units are the papers': D, a0³, meV, meV, a0², meV, meV ×
4, cal/(mol·K) (the wheel's Hartree values × 27211.386 for energies).
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "ELEMENTS",
    "MAX_ATOMS",
    "TARGETS",
    "Molecules",
    "QM9Table",
    "cache_dir",
    "load_graphs",
    "load_table",
    "qm9pack_data_dir",
]

#: element symbols in the order of the atom-type index used by the model
ELEMENTS: tuple[str, ...] = ("H", "C", "N", "O", "F")
#: The most atoms of a QM9 molecule (hydrogens included).
MAX_ATOMS = 29
HARTREE_TO_MEV = 27211.386245988

#: (name, wheel column, unit, factor from the wheel's unit, atomization reference or None)
TARGETS: tuple[tuple[str, str, str, float, str | None], ...] = (
    ("mu", "Dipole_debye", "D", 1.0, None),
    ("alpha", "Polarizability_bohr3", "a0³", 1.0, None),
    ("homo", "HOMO_au", "meV", HARTREE_TO_MEV, None),
    ("lumo", "LUMO_au", "meV", HARTREE_TO_MEV, None),
    ("r2", "R2_bohr2", "a0²", 1.0, None),
    ("zpve", "ZPVE_au", "meV", HARTREE_TO_MEV, None),
    ("U0", "InternalEnergy_0K_au", "meV", HARTREE_TO_MEV, "U0"),
    ("U", "InternalEnergy_298K_au", "meV", HARTREE_TO_MEV, "U"),
    ("H", "Enthalphy_298K_au", "meV", HARTREE_TO_MEV, "H"),
    ("G", "GibbsFreeEnergy_298K_au", "meV", HARTREE_TO_MEV, "G"),
    ("cv", "Heatcapacity_Cv_cal_mol_K", "cal/(mol·K)", 1.0, None),
)

#: energies of the isolated atoms (Hartree), Ramakrishnan et al. 2014's atom references
ATOM_REFERENCES: dict[str, dict[str, float]] = {
    "U0": {"H": -0.500273, "C": -37.846772, "N": -54.583861, "O": -75.064579, "F": -99.718730},
    "U": {"H": -0.498857, "C": -37.845355, "N": -54.582445, "O": -75.063162, "F": -99.717314},
    "H": {"H": -0.497912, "C": -37.844411, "N": -54.581501, "O": -75.062219, "F": -99.716370},
    "G": {"H": -0.510927, "C": -37.861317, "N": -54.598897, "O": -75.079532, "F": -99.733544},
}

MISSING_EXTRA = (
    "the qm9 problem needs the QM9 data of the 'qm9pack' wheel: "
    'pip install "mtl_fast[qm9]" (or: pip install qm9pack)'
)
_TABLE_VERSION = 1


def qm9pack_data_dir() -> Path:
    """The ``data`` folder of the installed ``qm9pack`` (located without importing it).

    Raises:
        ImportError: ``qm9pack`` is not installed; the message names the extra to install.
    """
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(MISSING_EXTRA)
    folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    if not (folder / "qm9_part1.csv").is_file():
        raise ImportError(f"{MISSING_EXTRA}; no qm9_part1.csv under {folder}")
    return folder


def cache_dir() -> Path:
    """Where parsed QM9 arrays and graphs are cached: ``$MTL_FAST_CACHE/qm9``, else
    ``$XDG_CACHE_HOME/mtl_fast/qm9``, else ``~/.cache/mtl_fast/qm9``."""
    root = os.environ.get("MTL_FAST_CACHE")
    if root:
        return Path(root) / "qm9"
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "mtl_fast" / "qm9"


@dataclass
class QM9Table:
    """Every molecule of the wheel, padded to :data:`MAX_ATOMS` atoms.

    Attributes:
        types: [N, 29] int8, index into :data:`ELEMENTS`, −1 for padding.
        positions: [N, 29, 3] float32, Å (0 for padding).
        num_atoms: [N] int16.
        targets: [N, 11] float64, :data:`TARGETS` in the papers' units.
    """

    types: np.ndarray
    positions: np.ndarray
    num_atoms: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return int(self.num_atoms.shape[0])


def _parse_wheel(folder: Path) -> QM9Table:
    csv.field_size_limit(1 << 28)
    index = {e: i for i, e in enumerate(ELEMENTS)}
    types: list[np.ndarray] = []
    positions: list[np.ndarray] = []
    targets: list[list[float]] = []
    parts = sorted(folder.glob("qm9_part*.csv"))
    for part in parts:
        with open(part, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            col = {name: i for i, name in enumerate(header)}
            for row in reader:
                elements = [e.strip(" '") for e in row[col["Elements"]].strip("[]").split(",")]
                xyz = row[col["XYZ_Ang"]].replace("[", "").replace("]", "").split(",")
                n = len(elements)
                t = np.full(MAX_ATOMS, -1, dtype=np.int8)
                t[:n] = [index[e] for e in elements]
                p = np.zeros((MAX_ATOMS, 3), dtype=np.float32)
                p[:n] = np.asarray(xyz, dtype=np.float64).reshape(n, 3)
                values = []
                for _, column, _, factor, ref in TARGETS:
                    v = float(row[col[column]])
                    if ref is not None:
                        v -= sum(ATOM_REFERENCES[ref][e] for e in elements)
                    values.append(v * factor)
                types.append(t)
                positions.append(p)
                targets.append(values)
    if not types:
        raise ImportError(f"{MISSING_EXTRA}; no qm9_part*.csv rows under {folder}")
    ty = np.stack(types)
    return QM9Table(
        types=ty,
        positions=np.stack(positions),
        num_atoms=(ty >= 0).sum(axis=1).astype(np.int16),
        targets=np.asarray(targets, dtype=np.float64),
    )


def load_table(folder: Path | None = None) -> QM9Table:
    """The whole table, parsed from the wheel once and then read from the cache (``.npz``)."""
    path = cache_dir() / f"table-v{_TABLE_VERSION}.npz"
    if path.is_file():
        with np.load(path) as z:
            return QM9Table(z["types"], z["positions"], z["num_atoms"], z["targets"])
    table = _parse_wheel(folder or qm9pack_data_dir())
    _save_npz(path, table.__dict__)
    return table


def _save_npz(path: Path, arrays: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)  # atomic: concurrent runs never read a half-written cache


# --------------------------------------------------------------------------- graphs
def _ranges(starts: Tensor, lengths: Tensor) -> Tensor:
    """Concatenation of arange(s, s + n) for every (s, n)."""
    total = int(lengths.sum())
    first = torch.cumsum(lengths, 0) - lengths
    steps = torch.arange(total, device=starts.device)
    return torch.repeat_interleave(starts - first, lengths, output_size=total) + steps


_FIELDS = ("types", "src", "dst", "dist", "atom_ptr", "edge_ptr")


@dataclass
class Molecules:
    """A set of molecular graphs in one flat layout (a model input, indexable like a tensor).

    Attributes:
        types: [A] int64 atom-type index (:data:`ELEMENTS`), all atoms one after another.
        src, dst: [E] int64 endpoints of the directed edges, *local* to each molecule.
        dist: [E] float32 edge length in Å.
        atom_ptr, edge_ptr: [M + 1] int64 offsets of each molecule's atoms and edges.
    """

    types: Tensor
    src: Tensor
    dst: Tensor
    dist: Tensor
    atom_ptr: Tensor
    edge_ptr: Tensor

    def __len__(self) -> int:
        return int(self.atom_ptr.numel()) - 1

    @property
    def device(self) -> torch.device:
        """Where the tensors are."""
        return self.types.device

    def to(self, device: torch.device | str) -> Molecules:
        """The same graphs on ``device`` (``self`` when already there)."""
        device = torch.device(device)
        if self.types.device == device:
            return self
        return Molecules(*(getattr(self, f).to(device) for f in _FIELDS))

    def __getitem__(self, index: Tensor | slice) -> Molecules:
        idx = torch.arange(len(self), device=self.device)[index]
        na = self.atom_ptr[idx + 1] - self.atom_ptr[idx]
        ne = self.edge_ptr[idx + 1] - self.edge_ptr[idx]
        atoms = _ranges(self.atom_ptr[idx], na)
        edges = _ranges(self.edge_ptr[idx], ne)
        zero = torch.zeros(1, dtype=torch.int64, device=self.device)
        return Molecules(
            types=self.types[atoms],
            src=self.src[edges],
            dst=self.dst[edges],
            dist=self.dist[edges],
            atom_ptr=torch.cat([zero, torch.cumsum(na, 0)]),
            edge_ptr=torch.cat([zero, torch.cumsum(ne, 0)]),
        )

    def batch(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Global edge endpoints ``src, dst`` [E], and the molecule of every atom [A] and of
        every edge [E]: the form the message-passing network consumes."""
        M = len(self)
        na = self.atom_ptr[1:] - self.atom_ptr[:-1]
        ne = self.edge_ptr[1:] - self.edge_ptr[:-1]
        mols = torch.arange(M, device=self.device)
        mol_of_edge = torch.repeat_interleave(mols, ne)
        offset = self.atom_ptr[:-1][mol_of_edge]
        return (
            self.src + offset,
            self.dst + offset,
            torch.repeat_interleave(mols, na),
            mol_of_edge,
        )


def build_graphs(table: QM9Table, index: np.ndarray, cutoff: float) -> Molecules:
    """Graphs of the molecules ``index``: every ordered atom pair closer than ``cutoff`` Å."""
    types, srcs, dsts, dists = [], [], [], []
    na, ne = [], []
    for i in index:
        n = int(table.num_atoms[i])
        pos = table.positions[i, :n].astype(np.float64)
        d = np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))
        s, t = np.nonzero((d < cutoff) & ~np.eye(n, dtype=bool))
        types.append(table.types[i, :n].astype(np.int64))
        srcs.append(s)
        dsts.append(t)
        dists.append(d[s, t].astype(np.float32))
        na.append(n)
        ne.append(len(s))
    zero = [0]
    return Molecules(
        types=torch.from_numpy(np.concatenate(types)),
        src=torch.from_numpy(np.concatenate(srcs).astype(np.int64)),
        dst=torch.from_numpy(np.concatenate(dsts).astype(np.int64)),
        dist=torch.from_numpy(np.concatenate(dists)),
        atom_ptr=torch.from_numpy(np.cumsum(zero + na).astype(np.int64)),
        edge_ptr=torch.from_numpy(np.cumsum(zero + ne).astype(np.int64)),
    )


def load_graphs(table: QM9Table, index: np.ndarray, cutoff: float) -> Molecules:
    """``build_graphs``, cached on disk under a key of (the molecules, the cut-off)."""
    key = hashlib.sha1(np.asarray(index, dtype=np.int64).tobytes() + repr(cutoff).encode())
    path = cache_dir() / f"graphs-v{_TABLE_VERSION}-{key.hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path) as z:
            return Molecules(
                types=torch.from_numpy(z["types"].astype(np.int64)),
                src=torch.from_numpy(z["src"].astype(np.int64)),
                dst=torch.from_numpy(z["dst"].astype(np.int64)),
                dist=torch.from_numpy(z["dist"]),
                atom_ptr=torch.from_numpy(z["atom_ptr"]),
                edge_ptr=torch.from_numpy(z["edge_ptr"]),
            )
    graphs = build_graphs(table, index, cutoff)
    _save_npz(
        path,
        {
            "types": graphs.types.numpy().astype(np.int8),
            "src": graphs.src.numpy().astype(np.int8),  # local indices < 29
            "dst": graphs.dst.numpy().astype(np.int8),
            "dist": graphs.dist.numpy(),
            "atom_ptr": graphs.atom_ptr.numpy(),
            "edge_ptr": graphs.edge_ptr.numpy(),
        },
    )
    return graphs
