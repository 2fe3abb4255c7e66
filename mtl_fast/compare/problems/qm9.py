"""The ``qm9`` problem: 11 molecular-property regressions on QM9 with a message-passing network
(the Navon et al. 2022 / Liu et al. 2023 benchmark, on a CPU-sized reduced protocol by default),
and ``qm9-raw``, the same without target standardisation.

Needs the optional extra: ``pip install "mtl_fast[qm9]"`` (the ``qm9pack`` wheel holds the data;
see :mod:`mtl_fast.compare.problems.qm9_data` for the targets, units and the graph cache).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtl_fast.compare.problems import qm9_data
from mtl_fast.compare.problems.base import (
    Evaluation,
    MetricTree,
    MultiTaskNet,
    Problem,
    ProblemData,
    Split,
)
from mtl_fast.compare.problems.qm9_data import ELEMENTS, TARGETS, Molecules

__all__ = ["PROTOCOLS", "MessagePassingEncoder", "QM9Problem", "QM9RawProblem"]

#: Data and model sizes. ``full`` is the papers' split (110k / 10k / rest; Navon et al. 2022
#: train 300 epochs with batch 120); ``reduced`` fits a few CPU minutes per method; ``tiny`` is
#: for tests.
PROTOCOLS: dict[str, dict[str, Any]] = {
    "full": {"n_train": 110_000, "n_val": 10_000, "n_test": 10_831, "hidden": 64, "layers": 4,
             "cutoff": 5.0, "epochs": 300, "quick_epochs": 20, "batch_size": 120},
    "reduced": {"n_train": 4_000, "n_val": 500, "n_test": 1_000, "hidden": 32, "layers": 3,
                "cutoff": 4.0, "epochs": 15, "quick_epochs": 3, "batch_size": 64},
    "tiny": {"n_train": 96, "n_val": 32, "n_test": 48, "hidden": 8, "layers": 2,
             "cutoff": 3.0, "epochs": 2, "quick_epochs": 1, "batch_size": 32},
}  # fmt: skip

#: seed of the fixed permutation of the 130,831 molecules that defines the splits
SPLIT_SEED = 0


class MessagePassingEncoder(nn.Module):
    """A small continuous-filter message-passing network (in the spirit of Schütt et al. 2017's
    SchNet) in plain PyTorch; the molecule embedding is the shared representation.

    h_i⁰ = E[type_i]; per layer l: m_i = Σ_{j: d_ij < r_c} W_l(e_ij) ⊙ (A_l h_j),
    h_i ← h_i + U_l(m_i), with e_ij the distance expanded on K Gaussians (centres on [0, r_c])
    times the cosine cut-off ½(cos(π d / r_c) + 1); z = Σ_i R(h_i) (sum over the atoms: the
    energies are extensive).
    """

    def __init__(self, hidden: int, layers: int, cutoff: float, num_rbf: int = 16) -> None:
        super().__init__()
        self.cutoff = float(cutoff)
        self.embed = nn.Embedding(len(ELEMENTS), hidden)
        self.register_buffer("centres", torch.linspace(0.0, cutoff, num_rbf))
        self.gamma = 0.5 / (cutoff / num_rbf) ** 2
        self.filters = nn.ModuleList(
            nn.Sequential(nn.Linear(num_rbf, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(layers)
        )
        self.inputs = nn.ModuleList(nn.Linear(hidden, hidden, bias=False) for _ in range(layers))
        self.updates = nn.ModuleList(
            nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
            for _ in range(layers)
        )
        self.readout = nn.Sequential(
            nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )

    def forward(self, mols: Molecules) -> Tensor:
        src, dst, mol_of_atom, _ = mols.batch()
        d = mols.dist
        centres: Tensor = self.centres  # type: ignore[assignment]
        envelope = 0.5 * (torch.cos(math.pi * d / self.cutoff) + 1.0)
        rbf = torch.exp(-self.gamma * (d[:, None] - centres[None, :]) ** 2) * envelope[:, None]
        h = self.embed(mols.types)
        for filt, lin, upd in zip(self.filters, self.inputs, self.updates):
            messages = filt(rbf) * lin(h)[src]
            h = h + upd(torch.zeros_like(h).index_add_(0, dst, messages))
        out = self.readout(h)
        z = torch.zeros(len(mols), out.shape[1], dtype=out.dtype, device=out.device)
        return z.index_add_(0, mol_of_atom, out)


class QM9Problem(Problem):
    """QM9's 11 targets (:data:`~mtl_fast.compare.problems.qm9_data.TARGETS`) as 11 regression
    tasks on one shared message-passing encoder with 11 MLP heads.

    Protocol (``protocol=``, :data:`PROTOCOLS`): a fixed permutation of all 130,831 molecules
    (``numpy.random.default_rng(0)``) gives the train, validation and test molecules in that
    order; ``reduced`` (the default) takes 4,000 / 500 / 1,000 of them, a 32-wide 3-layer
    network with a 4 Å cut-off and 15 epochs; ``full`` is Navon et al. 2022's 110k / 10k / rest
    split with a 64-wide network (their model is Gilmer et al. 2017's edge-network MPNN with
    Set2Set read-out over 300 epochs; this one is a smaller continuous-filter network).

    Losses: MSE per target. With ``scale_targets`` (Navon et al. 2022's ``--scale-y``; the
    default) the targets are standardised with the training split's mean and standard
    deviation; ``qm9-raw`` trains on the raw values in the reported units, whose variances span
    eight orders of magnitude (c_v ~ 16 vs. the energies ~ 10⁸ meV²). Test metric: MAE per
    target in the papers' units (↓); Δm% against 11 single-task models trained by the same
    code; KPI for AMTL / DTP: clipped R² per target on validation.
    """

    name = "qm9"
    title = "QM9: 11 molecular properties, message-passing network (reduced protocol)"
    lr = 1e-3
    task_names: ClassVar[list[str]] = [t[0] for t in TARGETS]
    task_types: ClassVar[list[str]] = ["regression"] * len(TARGETS)
    units: ClassVar[dict[str, str]] = {t[0]: t[2] for t in TARGETS}
    scale_targets: ClassVar[bool] = True
    published: ClassVar[str | None] = "qm9"

    def __init__(self, *, tiny: bool = False, protocol: str = "reduced") -> None:
        super().__init__(tiny=tiny)
        self.protocol = "tiny" if tiny else protocol
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown qm9 protocol {protocol!r}; choose from {list(PROTOCOLS)}")
        self.spec = dict(PROTOCOLS[self.protocol])
        self.epochs = int(self.spec["epochs"])  # type: ignore[misc]
        self.quick_epochs = int(self.spec["quick_epochs"])  # type: ignore[misc]
        self.batch_size = int(self.spec["batch_size"])  # type: ignore[misc]
        self.higher_is_better = {name: {"MAE": False} for name in self.task_names}
        qm9_data.qm9pack_data_dir()  # fail early with the install hint
        self.mean = torch.zeros(len(TARGETS), dtype=torch.float64)
        self.std = torch.ones(len(TARGETS), dtype=torch.float64)

    def description(self) -> str:
        d, s = self.data(), self.spec
        scaling = (
            "standardised with the training split's mean and std (`--scale-y`)"
            if self.scale_targets
            else "**not** standardised (raw values in the reported units)"
        )
        return (
            "QM9 (Ramakrishnan et al. 2014, from the `qm9pack` wheel), the 11 targets of Navon "
            "et al. 2022 and Liu et al. 2023 (μ, α, HOMO, LUMO, ⟨R²⟩, ZPVE, atomization U0, U, "
            f"H, G, c_v). Protocol `{self.protocol}`: {len(d.train)} / {len(d.val)} / "
            f"{len(d.test)} train / validation / test molecules of a fixed seeded permutation; "
            f"graphs with edges between atoms closer than {s['cutoff']} Å; a {s['layers']}-layer, "
            f"{s['hidden']}-wide continuous-filter message-passing encoder with sum read-out and "
            f"11 MLP heads. Losses: MSE per target, targets {scaling}. Test metric: MAE per "
            "target in the papers' units (D, a0³, meV, meV, a0², meV, meV ×4, cal/(mol·K)). "
            "Differences from the papers: a subset of the molecules, fewer epochs, a smaller "
            "network than Gilmer et al. 2017's MPNN, no learning-rate schedule."
        )

    def config(self) -> dict[str, Any]:
        return {**super().config(), "protocol": self.protocol, **self.spec,
                "scale_targets": self.scale_targets, "split_seed": SPLIT_SEED}  # fmt: skip

    def load(self) -> ProblemData:
        table = qm9_data.load_table()
        s = self.spec
        order = np.random.default_rng(SPLIT_SEED).permutation(len(table))
        bounds = np.cumsum([0, s["n_train"], s["n_val"], s["n_test"]])
        if bounds[-1] > len(table):
            raise ValueError(f"protocol {self.protocol!r} needs {bounds[-1]} molecules")
        parts = [np.sort(order[bounds[k] : bounds[k + 1]]) for k in range(3)]
        raw = torch.from_numpy(table.targets)
        if self.scale_targets:
            train_y = raw[torch.from_numpy(parts[0])]
            self.mean, self.std = train_y.mean(dim=0), train_y.std(dim=0)

        def split(idx: np.ndarray) -> Split:
            y = raw[torch.from_numpy(idx)]
            scaled = ((y - self.mean) / self.std).float()
            return Split(qm9_data.load_graphs(table, idx, s["cutoff"]), {"y": scaled, "raw": y})

        return ProblemData(*(split(p) for p in parts))

    def build_model(self, tasks: Sequence[int]) -> MultiTaskNet:
        s = self.spec
        encoder = MessagePassingEncoder(s["hidden"], s["layers"], s["cutoff"])
        h = int(s["hidden"])
        heads = [nn.Sequential(nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1)) for _ in tasks]
        return MultiTaskNet(encoder, heads)

    def losses(self, outputs: Sequence[Tensor], batch: Split, tasks: Sequence[int]) -> list[Tensor]:
        y = batch.targets["y"]
        return [F.mse_loss(o.squeeze(1), y[:, t]) for o, t in zip(outputs, tasks)]

    def predict(self, model: MultiTaskNet, mols: Molecules, chunk: int = 1000) -> Tensor:
        """Predictions [M, len(heads)] in the reported units, in chunks of molecules."""
        parts = []
        for i in range(0, len(mols), chunk):
            outs = model(mols[slice(i, i + chunk)])
            parts.append(torch.cat(outs, dim=1).to(torch.float64))
        return torch.cat(parts)

    @torch.no_grad()
    def evaluate(self, model: MultiTaskNet, split: Split, tasks: Sequence[int]) -> Evaluation:
        tasks = list(tasks)
        pred = self.predict(model, split.inputs).cpu() * self.std[tasks] + self.mean[tasks]
        y = split.targets["raw"][:, tasks].cpu()
        metrics: MetricTree = {}
        kpi: list[float] = []
        for k, t in enumerate(tasks):
            err = pred[:, k] - y[:, k]
            metrics[self.task_names[t]] = {"MAE": float(err.abs().mean())}
            sst = float(((y[:, k] - y[:, k].mean()) ** 2).sum())
            kpi.append(max(0.0, 1.0 - float((err**2).sum()) / sst) if sst > 0 else 0.0)
        return Evaluation(metrics, kpi)

    def static_weights(self, model: MultiTaskNet) -> list[float]:
        """1 / L_t at initialisation on the first 256 training molecules (Σ w = T)."""
        train = self.data().train
        batch = train.take(slice(0, min(256, len(train))))
        tasks = list(range(self.num_tasks))
        with torch.no_grad():
            values = [float(v) for v in self.scaled_losses(model(batch.inputs), batch, tasks)]
        inv = [1.0 / max(v, 1e-12) for v in values]
        return [self.num_tasks * w / sum(inv) for w in inv]

    def display_columns(self, metrics: MetricTree) -> dict[str, float]:
        return {f"{t} MAE [{self.units[t]}]": v["MAE"] for t, v in metrics.items()}

    def display_higher_is_better(self) -> dict[str, bool]:
        return {f"{t} MAE [{self.units[t]}]": False for t in self.task_names}


class QM9RawProblem(QM9Problem):
    """:class:`QM9Problem` without target standardisation (the failure mode users meet when
    they forget ``--scale-y``); reuses ``qm9``'s single-task baselines."""

    name = "qm9-raw"
    title = "QM9 without target standardisation (raw units)"
    scale_targets = False
    reference_problem = "qm9"
    published = None  # the papers standardise the targets: no published counterpart
