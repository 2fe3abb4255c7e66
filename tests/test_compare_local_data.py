"""The local-data problems (``nyuv2``, ``cityscapes``, ``celeba``) on tiny synthetic files
written in the exact layouts they read (MTAN/LibMTL ``.npy`` folders; CelebA's attribute and
partition files and image folder): loading, the losses and metrics with their directions,
training through the comparison and the command line. No download."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from mtl_fast.compare.problems import CelebAProblem, CityscapesProblem, NYUv2Problem
from mtl_fast.compare.problems.celeba import f1_scores, read_attributes
from mtl_fast.compare.problems.dense import (
    DenseMetrics,
    depth_loss,
    load_npy_split,
    normal_loss,
    segmentation_loss,
)
from mtl_fast.compare.train import CompareConfig, compare_problem

TINY = CompareConfig(epochs=1, max_steps=2, progress=False, timing_rounds=1, timing_steps=1)
H, W = 8, 12


def _write_scenes(root: Path, *, label_folder: str, classes: int, normals: bool) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 3)):
        for part in ("image", label_folder, "depth") + (("normal",) if normals else ()):
            (root / split / part).mkdir(parents=True)
        for i in range(n):
            np.save(root / split / "image" / f"{i}.npy", rng.random((H, W, 3), dtype=np.float32))
            label = rng.integers(0, classes, (H, W)).astype(np.float32)
            label[0, :3] = -1.0  # unlabelled pixels
            np.save(root / split / label_folder / f"{i}.npy", label)
            depth = rng.random((H, W, 1), dtype=np.float32) + 0.5
            depth[1, :2] = 0.0  # no measurement
            np.save(root / split / "depth" / f"{i}.npy", depth)
            if normals:
                v = rng.normal(size=(H, W, 3)).astype(np.float32)
                v /= np.linalg.norm(v, axis=-1, keepdims=True)
                v[2, :2] = 0.0  # no ground truth
                np.save(root / split / "normal" / f"{i}.npy", v)


@pytest.fixture
def nyuv2_root(tmp_path: Path) -> Path:
    _write_scenes(tmp_path / "nyuv2", label_folder="label", classes=13, normals=True)
    return tmp_path / "nyuv2"


@pytest.fixture
def cityscapes_root(tmp_path: Path) -> Path:
    _write_scenes(tmp_path / "cityscapes", label_folder="label_7", classes=7, normals=False)
    return tmp_path / "cityscapes"


def _finite(tree: dict) -> bool:
    return all(math.isfinite(v) for ms in tree.values() for v in ms.values())


# --------------------------------------------------------------------------- dense metrics
def test_perfect_dense_predictions_score_perfectly() -> None:
    labels = torch.tensor([[[0, 1], [2, -1]]])
    logits = torch.nn.functional.one_hot(labels.clamp_min(0), 3).permute(0, 3, 1, 2).float()
    depth = torch.tensor([[[[1.0, 2.0], [0.0, 4.0]]]])
    normal = torch.nn.functional.normalize(torch.randn(1, 3, 2, 2), dim=1)
    m = DenseMetrics(3)
    m.add_segmentation(logits, labels)
    m.add_depth(depth.clone(), depth)
    m.add_normal(normal * 2.0, normal)  # the prediction is normalised
    assert m.segmentation() == {"mIoU": 1.0, "pix_acc": 1.0}
    assert m.depth() == {"abs_err": 0.0, "rel_err": 0.0}
    n = m.normal()
    assert n["mean"] < 0.01 and n["median"] < 0.01
    assert n["within_11.25"] == n["within_22.5"] == n["within_30"] == 100.0
    assert float(segmentation_loss(logits * 50, labels)) < 1e-6
    assert float(depth_loss(depth, depth)) == 0.0
    assert float(normal_loss(normal, normal)) < 1e-6


def test_dense_metrics_match_hand_computed_values() -> None:
    # 4 labelled pixels: gt (0, 0, 1, 1), pred (0, 1, 1, 1), one ignored pixel
    labels = torch.tensor([[[0, 0, 1, 1, -1]]])
    pred = torch.tensor([[[0, 1, 1, 1, 0]]])
    logits = torch.nn.functional.one_hot(pred, 2).permute(0, 3, 1, 2).float()
    m = DenseMetrics(2)
    m.add_segmentation(logits, labels)
    seg = m.segmentation()
    # IoU(0) = 1 / 2, IoU(1) = 2 / 3
    assert seg["mIoU"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert seg["pix_acc"] == pytest.approx(3 / 4)
    gt = torch.tensor([[[[2.0, 4.0, 0.0]]]])  # the 0 is not measured
    m.add_depth(torch.tensor([[[[3.0, 3.0, 9.0]]]]), gt)
    assert m.depth() == {"abs_err": pytest.approx(1.0), "rel_err": pytest.approx(0.375)}
    # normals at 0°, 20° and 90° from the ground truth
    angles = torch.deg2rad(torch.tensor([0.0, 20.0, 90.0]))
    pred_n = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros(3)])[None, :, None]
    gt_n = torch.tensor([1.0, 0.0, 0.0]).reshape(1, 3, 1, 1).expand(1, 3, 1, 3)
    m.add_normal(pred_n, gt_n)
    n = m.normal()
    assert n["mean"] == pytest.approx(110 / 3, abs=1e-3)
    assert n["median"] == pytest.approx(20.0, abs=0.01)
    assert n["within_11.25"] == pytest.approx(100 / 3)
    assert n["within_22.5"] == pytest.approx(200 / 3)


# --------------------------------------------------------------------------- scenes
def test_npy_layout_is_read_and_resized(nyuv2_root: Path) -> None:
    arrays = load_npy_split(nyuv2_root, "train", ["image", "label", "depth", "normal"])
    assert arrays["image"].shape == (12, 3, H, W) and arrays["label"].dtype == torch.int64
    assert arrays["label"].shape == (12, H, W) and int(arrays["label"].min()) == -1
    assert arrays["depth"].shape == (12, 1, H, W) and arrays["normal"].shape == (12, 3, H, W)
    small = load_npy_split(nyuv2_root, "val", ["image", "normal"], image_size=(4, 8), limit=2)
    assert small["image"].shape == (2, 3, 4, 8)
    norms = small["normal"].norm(dim=1)
    assert torch.all(((norms - 1).abs() < 1e-5) | (norms == 0))


def test_missing_layout_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "train" / "image").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="train/label"):
        load_npy_split(tmp_path, "train", ["image", "label"])
    with pytest.raises(ValueError, match="--data-root"):
        NYUv2Problem()


def test_nyuv2_trains_and_reports_the_papers_metrics(nyuv2_root: Path) -> None:
    problem = NYUv2Problem(data_root=nyuv2_root, tiny=True)
    data = problem.data()
    assert (len(data.train), len(data.val), len(data.test)) == (11, 1, 3)  # every 10th: val
    assert problem.higher_is_better == {
        "segmentation": {"mIoU": True, "pix_acc": True},
        "depth": {"abs_err": False, "rel_err": False},
        "normal": {"mean": False, "median": False, "within_11.25": True,
                   "within_22.5": True, "within_30": True},
    }  # fmt: skip
    result = compare_problem(problem, ["EqualWeighting", "IMTLG"], TINY)
    assert [o.name for o in result.ran] == ["EqualWeighting", "IMTLG"]
    for o in result.ran:
        assert o.metrics is not None and _finite(o.metrics)
        assert math.isfinite(o.delta_mtl)
        assert all(0.0 <= k <= 1.0 for k in o.runs[0].val.kpi)


def test_scene_delta_is_the_flat_mean_over_metrics(nyuv2_root: Path) -> None:
    problem = NYUv2Problem(data_root=nyuv2_root, tiny=True)
    base = {
        "segmentation": {"mIoU": 0.5, "pix_acc": 0.5},
        "depth": {"abs_err": 1.0, "rel_err": 1.0},
        "normal": {"mean": 10.0, "median": 10.0, "within_11.25": 50.0, "within_22.5": 50.0,
                   "within_30": 50.0},
    }  # fmt: skip
    better_seg = {**base, "segmentation": {"mIoU": 1.0, "pix_acc": 0.5}}
    # one of nine metrics +100 %: the papers' Δm averages over metrics, not tasks
    assert problem.delta_mtl(better_seg, base) == pytest.approx(100.0 / 9)


def test_cityscapes_through_the_command_line(cityscapes_root: Path, tmp_path: Path, capsys) -> None:
    from mtl_fast.cli import main

    out = tmp_path / "out"
    argv = ["compare", "--problem", "cityscapes", "--data-root", str(cityscapes_root), "--tiny"]
    argv += ["--steps", "1", "--epochs", "1", "--methods", "equal,MGDA", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[cityscapes]" in printed and "segmentation mIoU" in printed
    assert (out / "results.json").exists()
    problem = CityscapesProblem(data_root=cityscapes_root, tiny=True)
    assert problem.task_names == ["segmentation", "depth"] and problem.num_classes == 7
    with pytest.raises(SystemExit, match="--data-root applies"):
        main(["compare", "--problem", "digits", "--data-root", str(cityscapes_root), "--tiny"])


# --------------------------------------------------------------------------- celeba
NAMES = [f"Attr_{k}" for k in range(40)]


def _write_celeba(root: Path, *, official: bool) -> None:
    Image = pytest.importorskip("PIL.Image")
    anno, part, img = (root / "Anno", root / "Eval", root / "Img" / "img_align_celeba")
    if not official:
        anno = part = root
        img = root / "img_align_celeba"
    for d in (anno, part, img):
        d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    files = [f"{i:06d}.jpg" for i in range(1, 13)]
    lines = [str(len(files)), " ".join(NAMES)]
    for f in files:
        values = rng.choice([-1, 1], 40)
        lines.append(f + "  " + " ".join(f"{v:2d}" for v in values))  # the file pads with spaces
        Image.fromarray(rng.integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(img / f)
    (anno / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    partition = [f"{f} {0 if i < 6 else 1 if i < 9 else 2}" for i, f in enumerate(files)]
    (part / "list_eval_partition.txt").write_text("\n".join(partition) + "\n")


def test_celeba_files_are_parsed(tmp_path: Path) -> None:
    _write_celeba(tmp_path, official=True)
    names, files, labels = read_attributes(tmp_path / "Anno" / "list_attr_celeba.txt")
    assert names == NAMES and len(files) == 12 and labels.shape == (12, 40)
    assert set(np.unique(labels)) <= {0, 1}
    bad = tmp_path / "bad.txt"
    bad.write_text("3\n" + " ".join(NAMES) + "\n000001.jpg 1 -1\n")
    with pytest.raises(ValueError, match="expected 40"):
        read_attributes(bad)


def test_f1_scores() -> None:
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    logits = torch.tensor([[2.0, -1.0], [-2.0, -1.0], [1.0, -1.0], [-1.0, -1.0]])
    # column 0: tp 1, fp 1, fn 1 -> F1 = 0.5; column 1: tp 0 -> 0
    assert f1_scores(logits, labels).tolist() == pytest.approx([0.5, 0.0])


def test_celeba_flat_layout_loads(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MTL_FAST_CACHE", str(tmp_path / "cache"))
    _write_celeba(tmp_path / "flat", official=False)
    data = CelebAProblem(data_root=tmp_path / "flat", image_size=8, tiny=True, limit=2).data()
    assert (len(data.train), len(data.val), len(data.test)) == (2, 2, 2)


def test_celeba_trains_with_40_tasks(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MTL_FAST_CACHE", str(tmp_path / "cache"))
    _write_celeba(tmp_path / "celeba", official=True)
    problem = CelebAProblem(data_root=tmp_path / "celeba", image_size=8, tiny=True)
    data = problem.data()
    assert (len(data.train), len(data.val), len(data.test)) == (6, 3, 3)
    assert data.train.inputs.dtype == torch.uint8 and data.train.inputs.shape == (6, 3, 8, 8)
    assert list((tmp_path / "cache" / "celeba").glob("images-*.npy"))
    assert problem.num_tasks == 40 and problem.higher_is_better[NAMES[0]] == {"F1": True}
    result = compare_problem(problem, ["EqualWeighting", "IMTLG"], TINY)
    for o in result.ran:
        assert o.metrics is not None and set(o.metrics) == set(NAMES)
        assert all(0.0 <= v["F1"] <= 1.0 for v in o.metrics.values())
        # random tiny images: a single-task F1 of 0 makes Δ undefined, said, not raised
        assert math.isfinite(o.delta_mtl) or "baseline value is 0" in (o.delta_note or "")
    # a second load reads the cache and gives the same images
    again = CelebAProblem(data_root=tmp_path / "celeba", image_size=8, tiny=True).data()
    assert torch.equal(again.test.inputs, data.test.inputs)


def test_celeba_missing_files_are_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"list_attr_celeba\.txt"):
        CelebAProblem(data_root=tmp_path)
