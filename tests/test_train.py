"""Training for seconds on tiny chips: the loop, checkpoints, metrics, resume, bad input."""

import csv
import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from safetensors.torch import load_file

from insar_slide.cli import main
from insar_slide.cli_common import epoch_bars
from insar_slide.errors import InputError
from insar_slide.sim import basin as sim_basin
from insar_slide.sim.config import SimConfig
from insar_slide.training.chips import make_chips
from insar_slide.training.config import ChipsConfig
from insar_slide.training.metrics import match_at_iou, prf1
from insar_slide.training.train import TrainConfig, lr_factor, train

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def chipset(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    cfg = SimConfig.model_validate({"seed": 11, "grid": {"shape": [512, 512], "chunk": 256},
                                    "landslides": {"density_per_100km2": 40}})
    store, truth = sim_basin.simulate(cfg, d / "b.zarr")
    make_chips(ChipsConfig(sources=[{"mosaic": str(store), "inventory": str(truth)}], out=str(d / "chips"),
                           size=128, rotations=(0, 90), split={"block_px": 512, "val_fraction": 0.3}))
    return d / "chips"


def _cfg(chips, out, **kw):
    base = {"chips": str(chips), "out": str(out), "epochs": 2, "batch_size": 2, "max_train_chips": 4, "max_val_chips": 2,
            "lr": 0.002, "model": {"variant": "r34", "rpn_pre_nms_top_n_train": 100, "rpn_post_nms_top_n_train": 50,
                                   "rpn_pre_nms_top_n_test": 100, "rpn_post_nms_top_n_test": 50,
                                   "rpn_batch_size_per_image": 64, "box_batch_size_per_image": 64}}
    base.update(kw)
    return TrainConfig.model_validate(base)


def test_paper_schedule():
    cfg = TrainConfig(chips="c", out="o")
    assert [lr_factor(e, cfg) for e in (1, 14, 15, 16, 17, 19)] == pytest.approx([1, 1, 0.4, 0.4, 0.16, 0.064])


@pytest.mark.slow
def test_train_writes_checkpoints_metrics_and_curve(chipset, tmp_path):
    steps = []
    row = train(_cfg(chipset, tmp_path / "run"), on_step=lambda s, n, loss: steps.append((s, n, loss)))
    run = tmp_path / "run"
    for f in ("last.safetensors", "best.safetensors", "train_state.safetensors", "metrics.csv", "loss.png", "last.json"):
        assert (run / f).is_file(), f
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"] and row["epoch"] == 2
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert rows[0]["AP50"] != ""  # validation ran with COCO metrics
    assert steps and steps[-1][0] == steps[-1][1] == 2
    card = json.loads((run / "last.json").read_text())
    assert card["model"]["variant"] == "r34" and card["epoch"] == 2 and card["data_fingerprint"]


class _Interrupted(Exception):
    pass


def _stop_after(step):
    def on_step(s, n, loss):
        if s == step:
            raise _Interrupted
    return on_step


@pytest.mark.slow
def test_resume_continues_exactly(chipset, tmp_path):
    # Two steps an epoch, the state stored after every step. The cut run is killed after step 1
    # of epoch 1, resumed to the end of epoch 1 (from its stored step, not from scratch), then
    # resumed at the epoch boundary to epoch 2; it ends with the weights and losses of a run
    # that was never interrupted.
    train(_cfg(chipset, tmp_path / "full", checkpoint_every_steps=1))
    cut = tmp_path / "cut"
    with pytest.raises(_Interrupted):
        train(_cfg(chipset, cut, checkpoint_every_steps=1), on_step=_stop_after(1))
    assert (cut / "partial.safetensors").is_file() and not (cut / "last.safetensors").exists()
    with pytest.raises(InputError, match="--resume"):
        train(_cfg(chipset, cut))  # a fresh run would throw the stored step away
    steps = []
    with epoch_bars() as bar_step:  # the CLI's progress bar starts inside the epoch, as the run does
        train(_cfg(chipset, cut, epochs=1), resume=True, on_step=lambda s, n, loss: (steps.append(s), bar_step(s, n, loss)))
    assert steps == [2]
    assert not (cut / "partial.safetensors").exists()  # removed once its epoch is finished
    train(_cfg(chipset, cut), resume=True)
    a, b = load_file(str(tmp_path / "full" / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    losses = [[float(r["loss"]) for r in csv.DictReader((d / "metrics.csv").open())] for d in (tmp_path / "full", cut)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    with pytest.raises(InputError, match="--resume"):
        train(_cfg(chipset, tmp_path / "full"))
    # resuming a finished run changes nothing and reports its last epoch
    before = (tmp_path / "full" / "last.safetensors").read_bytes()
    row = train(_cfg(chipset, tmp_path / "full"), resume=True)
    assert row["epoch"] == 2 and np.isfinite(row["loss"])
    assert (tmp_path / "full" / "last.safetensors").read_bytes() == before


@pytest.mark.slow
def test_training_refuses_a_chip_set_without_boxes(chipset, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    coco = json.loads((chipset / "coco_train.json").read_text())
    (empty / "coco_train.json").write_text(json.dumps({**coco, "annotations": []}))
    (empty / "coco_val.json").write_text((chipset / "coco_val.json").read_text())
    with pytest.raises(InputError, match="no training chip has a box"):
        train(_cfg(empty, tmp_path / "r"))
    bad = json.loads((chipset / "coco_train.json").read_text())
    bad["annotations"][0]["bbox"] = [120, 120, 50, 50]
    (empty / "coco_train.json").write_text(json.dumps(bad))
    with pytest.raises(InputError, match="outside"):
        train(_cfg(empty, tmp_path / "r"))


def test_cli_train_and_unknown_key(chipset, tmp_path):
    cfg = _cfg(chipset, "run", epochs=1).model_dump(mode="json")
    (tmp_path / "t.yaml").write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["train", str(tmp_path / "t.yaml")])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "run" / "metrics.csv").is_file()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "epochz": 3}))
    res = CliRunner().invoke(main, ["train", str(tmp_path / "bad.yaml")])
    assert res.exit_code == 2 and "unknown key 'epochz'" in res.output


def test_matching_and_prf1():
    gt = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], float)
    det = np.array([[0, 0, 10, 11], [0, 0, 10, 10], [50, 50, 60, 60]], float)
    sc = np.array([0.9, 0.8, 0.7])
    assert match_at_iou(gt, det, sc) == (1, 2, 1)
    m = prf1([(gt, det, sc)], score_threshold=0.75)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 1, 1) and m["f1"] == pytest.approx(0.5)


def test_a_detection_in_an_ignore_region_is_neither_hit_nor_false():
    gt = np.array([[0, 0, 10, 10]], float)
    ignore = np.array([[40, 40, 80, 80]], float)
    # a hit, a detection half inside the ignore box, one barely touching it, one far away
    det = np.array([[0, 0, 10, 10], [30, 40, 50, 60], [75, 75, 95, 95], [200, 200, 210, 210]], float)
    sc = np.array([0.9, 0.8, 0.8, 0.8])
    assert match_at_iou(gt, det, sc, ignore_boxes=ignore) == (1, 2, 0)
    m = prf1([(gt, det, sc, ignore)], score_threshold=0.5)
    assert (m["tp"], m["fp"], m["fn"]) == (1, 2, 0)
    assert prf1([(gt, det, sc)], score_threshold=0.5)["fp"] == 3  # without the region it counts
    # A ground-truth box always wins over an ignore region it lies in.
    assert match_at_iou(gt, det[:1], sc[:1], ignore_boxes=np.array([[0, 0, 100, 100]], float)) == (1, 0, 0)


def test_coco_metrics_leave_out_detections_in_crowd_regions():
    from insar_slide.training.metrics import coco_metrics
    from insar_slide.training.voc import coco_dict

    images = [{"id": 1, "file_name": "a.tif", "width": 128, "height": 128}]
    gt = coco_dict(images, [np.array([[10, 10, 40, 40]], float)], [np.array([[60, 60, 120, 120]], float)])
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 1]

    def det(x1, y1, x2, y2, s):
        return {"image_id": 1, "category_id": 1, "bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}

    # the best-scored detection sits in the ignore region: AP stays 1 (it would be 0.5 if it counted)
    m = coco_metrics(gt, [det(70, 70, 110, 110, 0.95), det(10, 10, 40, 40, 0.9)])
    assert m["AP50"] == pytest.approx(1.0)
    gt_plain = coco_dict(images, [np.array([[10, 10, 40, 40]], float)])
    assert coco_metrics(gt_plain, [det(70, 70, 110, 110, 0.95), det(10, 10, 40, 40, 0.9)])["AP50"] < 0.6
    # ignore regions alone: nothing to find
    assert np.isnan(coco_metrics(coco_dict(images, [np.zeros((0, 4))], [np.array([[0, 0, 9, 9]], float)]), [])["AP50"])


def test_crops_turn_boxes_they_cut_off_into_ignore_regions():
    from insar_slide.training.data import random_crop

    rate = np.zeros((128, 128), np.float32)
    boxes = np.array([[10, 10, 30, 30], [60, 60, 120, 120]], float)
    ignore = np.array([[0, 100, 20, 120]], float)
    rng = np.random.default_rng(0)
    for _ in range(50):
        out, b, ig = random_crop(rate, boxes, size=64, rng=rng, ignore=ignore)
        assert out.shape == (64, 64)
        assert ((b >= 0) & (b <= 64)).all() and ((ig >= 0) & (ig <= 64)).all()
        assert (ig[:, 2] > ig[:, 0]).all() and (ig[:, 3] > ig[:, 1]).all()
    # a crop at the origin keeps the first box, cuts the second to a 4 x 4 corner (dropped: ignored)
    rng = np.random.default_rng(1)
    while True:
        out, b, ig = random_crop(rate, boxes, size=64, rng=rng, ignore=ignore)
        if len(b) == 1 and np.allclose(b[0], [10, 10, 30, 30]) and len(ig) == 1:
            assert np.allclose(ig[0], [60, 60, 64, 64])
            break


@pytest.mark.slow
def test_ignore_aware_sampling_keeps_ignored_anchors_and_proposals_out_of_the_background():
    from insar_slide.model.detector import ModelConfig, build_model

    model = build_model(ModelConfig(variant="r34"))
    anchors = [torch.tensor([[0, 0, 10, 10], [50, 50, 60, 60], [100, 100, 110, 110]], dtype=torch.float32)]
    target = {"boxes": torch.tensor([[0, 0, 10, 10]], dtype=torch.float32), "labels": torch.ones(1, dtype=torch.int64)}
    labels, _ = model.rpn.assign_targets_to_anchors(anchors, [target])
    assert labels[0].tolist() == [1.0, 0.0, 0.0]  # no ignore key: torchvision's behaviour
    labels, _ = model.rpn.assign_targets_to_anchors(anchors, [{**target, "ignore": torch.tensor([[45.0, 45, 65, 65]])}])
    assert labels[0].tolist() == [1.0, -1.0, 0.0]
    model.roi_heads.train()
    props = [anchors[0].clone()]
    _, _, lab, _ = model.roi_heads.select_training_samples(props, [{**target, "ignore": torch.tensor([[45.0, 45, 65, 65]])}])
    # sampled: the gt box twice (as a proposal and appended), the far proposal; never the ignored one
    assert sorted(lab[0].tolist()) == [0, 1, 1]
    _, _, lab, _ = model.roi_heads.select_training_samples([anchors[0].clone()], [target])
    assert sorted(lab[0].tolist()) == [0, 0, 1, 1]


@pytest.mark.slow
def test_training_with_ignore_regions_runs(chipset, tmp_path):
    coco = json.loads((chipset / "coco_train.json").read_text())
    assert any(a["iscrowd"] for a in coco["annotations"])  # the simulated truth has slow slides
    row = train(_cfg(chipset, tmp_path / "run", epochs=1, ignore_regions=True))
    assert np.isfinite(row["loss"])


@pytest.fixture(scope="module")
def two_models(chipset, tmp_path_factory):
    d = tmp_path_factory.mktemp("models")
    train(_cfg(chipset, d / "a", epochs=1))
    b = _cfg(chipset, d / "b", epochs=1).model_dump()
    b["model"]["variant"] = "r34_fpn_cbam"
    train(TrainConfig.model_validate(b))
    return d / "a" / "last.safetensors", d / "b" / "last.safetensors"


@pytest.mark.slow
def test_cli_evaluate_writes_tables_and_curve(chipset, two_models, tmp_path):
    a, b = two_models
    res = CliRunner().invoke(main, ["evaluate", str(a), str(b), "--chips", str(chipset), "--out", str(tmp_path / "ev")])
    assert res.exit_code == 0, res.output
    t2 = (tmp_path / "ev" / "table2.csv").read_text().splitlines()
    assert t2[0] == "method,backbone,precision,recall,f1,mAP50,mAP50-95" and len(t2) == 3
    assert "ResNet-34+FPN+CBAM" in (tmp_path / "ev" / "table2.md").read_text()
    assert (tmp_path / "ev" / "table3.md").read_text().count("\n") == 14
    assert (tmp_path / "ev" / "pr_curve.png").stat().st_size > 5000
    assert "best F1 on this split" in res.output


def test_several_chip_folders_pool_into_one_split(chipset, tmp_path):
    # one operating threshold chosen on every validation set at once: `evaluate --chips A --chips B`
    import shutil

    from insar_slide.training.data import read_split, read_splits
    from insar_slide.training.evaluate import best_f1, pr_curve
    from insar_slide.training.train import evaluate_predictions

    other = tmp_path / "other"
    shutil.copytree(chipset, other)
    one, coco1 = read_split(chipset, "train")
    both, coco = read_splits([str(chipset), str(other)], "train")
    assert len(both) == 2 * len(one) > 0 and len(coco["images"]) == 2 * len(coco1["images"])
    assert len({im["id"] for im in coco["images"]}) == len(coco["images"])
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"]) == 2 * len(coco1["annotations"])
    assert {str(c.path.parent.parent) for c in both} == {str(chipset), str(other)}
    # the truth as detections, a false alarm on the second folder's first chip: every id must point
    # at its own chip for AP50 and recall to be 1
    preds = [(c.boxes, np.linspace(0.9, 0.99, len(c.boxes))) for c in both]
    k = len(one)
    preds[k] = (np.vstack([preds[k][0], [[0, 0, 8, 8]]]), np.r_[preds[k][1], 0.5])
    m = evaluate_predictions(both, coco, preds, 0.8)
    assert m["AP50"] == pytest.approx(1.0) and m["recall"] == pytest.approx(1.0) and m["precision"] == pytest.approx(1.0)
    assert best_f1(*pr_curve(both, preds))["best_f1_threshold"] >= 0.9
    assert read_splits(str(chipset), "train")[1] == coco1


def test_best_f1_threshold_counts_tied_scores_together():
    from insar_slide.training.evaluate import best_f1

    hits = np.array([1, 1, 0, 1])
    score = np.array([0.9, 0.8, 0.8, 0.5])
    tp = np.cumsum(hits)
    recall, precision = tp / 4, tp / np.arange(1, 5)
    b = best_f1(recall, precision, score)
    assert b["best_f1_threshold"] == 0.5 and b["best_f1"] == pytest.approx(0.75)
    # without the 4th detection the best is 0.8, and it keeps both detections scored 0.8
    b = best_f1(recall[:3], precision[:3], score[:3])
    assert b["best_f1_threshold"] == 0.8 and b["best_f1_precision"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_pseudo_labels_go_back_into_chips(chipset, two_models, tmp_path):
    a, _ = two_models
    res = CliRunner().invoke(main, ["pseudo-label", str(a), "--chips", str(chipset), "--out", str(tmp_path / "pl"),
                                    "--score-threshold", "0.0"])
    assert res.exit_code == 0, res.output
    vocs = sorted((tmp_path / "pl" / "voc").glob("*.xml"))
    assert len(vocs) == len(json.loads((chipset / "coco_train.json").read_text())["images"])
    manifest = json.loads((chipset / "manifest.json").read_text())
    src = manifest["config"]["sources"][0]
    s = make_chips(ChipsConfig(sources=[{"mosaic": src["mosaic"], "inventory": str(tmp_path / "pl" / "voc"),
                                         "voc_manifest": str(chipset / "chips.csv")}],
                               out=str(tmp_path / "round2"), size=128, rotations=(0,)))
    assert s["chips"] > 0


@pytest.mark.parametrize("name", ["train_paper.yaml", "train_cpu.yaml"])
def test_sample_train_configs_are_valid(name):
    from insar_slide.training.train import load_train_config

    from .conftest import REPO
    cfg = load_train_config(REPO / "configs" / name)
    assert cfg.model.variant == "r34_fpn_cbam" and cfg.lr == 0.01


def test_every_shipped_train_config_parses():
    from insar_slide.training.train import load_train_config

    from .conftest import REPO
    paths = sorted((REPO / "configs").glob("train_*.yaml")) + sorted((REPO / "configs" / "ablation").glob("*.yaml"))
    assert len(paths) >= 8
    assert {load_train_config(p).model.variant for p in paths} == {"r34", "r34_fpn", "r34_fpn_cbam"}
    # the ablation is the CPU recipe with only the variant (and run folder) changed: no drift
    recipe = load_train_config(REPO / "configs" / "train_cpu.yaml").model_dump()
    for p in sorted((REPO / "configs" / "ablation").glob("*.yaml")):
        cfg = load_train_config(p).model_dump()
        assert cfg["out"] != recipe["out"]
        variant = cfg["model"].pop("variant")
        assert p.stem == f"train_{variant}"
        assert {**cfg, "out": None, "model": {**cfg["model"]}} == \
            {**recipe, "out": None, "model": {k: v for k, v in recipe["model"].items() if k != "variant"}}


@pytest.mark.slow
def test_anchor_sizes_reach_the_checkpoint_and_a_finetune_keeps_every_weight(chipset, tmp_path):
    from pydantic import ValidationError

    from insar_slide.model.checkpoint import load_checkpoint
    from insar_slide.model.detector import ModelConfig, build_model, load_pretrained

    cfg = _cfg(chipset, tmp_path / "a", epochs=1)
    cfg = cfg.model_copy(update={"model": cfg.model.model_copy(update={"anchor_sizes": (8, 16, 32)})})
    train(cfg)
    assert json.loads((tmp_path / "a" / "last.json").read_text())["model"]["anchor_sizes"] == [8, 16, 32]
    model, mcfg, _ = load_checkpoint(tmp_path / "a" / "last.safetensors")
    assert mcfg.anchor_sizes == (8, 16, 32)
    assert model.rpn.anchor_generator.sizes == ((8, 16, 32),)
    # resuming with other anchors would silently keep the checkpoint's: refused
    cfg2 = cfg.model_copy(update={"epochs": 2, "model": cfg.model.model_copy(update={"anchor_sizes": (16, 32, 64)})})
    with pytest.raises(InputError, match="anchor_sizes"):
        train(cfg2, resume=True)
    # other anchor sizes, same count per location: every tensor of the first model fits
    other = build_model(ModelConfig(variant="r34", anchor_sizes=(16, 32, 64), rpn_pre_nms_top_n_test=50))
    report = load_pretrained(other, tmp_path / "a" / "last.safetensors")
    assert report["shape_mismatch"] == [] and report["missing"] == [] and report["unused"] == []
    with pytest.raises(ValidationError, match="five sizes"):
        TrainConfig.model_validate({"chips": "c", "out": "o", "model": {"variant": "r34_fpn", "anchor_sizes": [8, 16]}})


@pytest.mark.slow
def test_export_model_fp16_with_card(two_models, chipset, tmp_path):
    _, b = two_models
    res = CliRunner().invoke(main, ["export-model", str(b), "--out", str(tmp_path / "ref.safetensors"), "--command", "x",
                                    "--score-threshold", "0.7"])
    assert res.exit_code == 0, res.output
    card = json.loads((tmp_path / "ref.json").read_text())
    assert card["command"] == "x" and card["data"]["chip_manifest"]["chips"] > 0 and card["parameters"] > 30e6
    assert card["score_threshold"] == 0.7  # the operating point run and evaluate default to
    from insar_slide.model.checkpoint import read_metadata
    # the training pixel survives the export (it was lost before 2026-12-07: every export read as 30 m)
    assert card["pixel_size_m"] == read_metadata(tmp_path / "ref.safetensors")["pixel_size_m"] == read_metadata(b)["pixel_size_m"]
    assert (tmp_path / "ref.safetensors").stat().st_size < 80 * 2**20


def test_hard_negatives_are_confident_detections_on_no_slide():
    from insar_slide.training.mining import HardNegatives, false_alarms

    truth = np.array([[10, 10, 50, 50]], float)
    ignore = np.array([[100, 100, 140, 140]], float)
    det = np.array([[12, 12, 48, 52],      # on the slide: a hit, not a false alarm
                    [10, 10, 80, 80],      # a loose box on the slide (IoU 0.33 > match_iou 0.3)
                    [60, 60, 90, 90],      # on nothing: hard negative
                    [105, 105, 135, 135],  # in an ignore region
                    [200, 200, 230, 230]])  # on nothing, but not confident
    fa = false_alarms(det, np.array([0.9, 0.9, 0.8, 0.9, 0.3]), truth, ignore, HardNegatives())
    assert fa.tolist() == [[60, 60, 90, 90]]


def test_mined_boxes_turn_with_the_rotated_twins(chipset):
    from insar_slide.training.boxes import rotate_cw
    from insar_slide.training.data import read_split
    from insar_slide.training.mining import HardNegatives, mine

    chips, _ = read_split(chipset, "train")
    runs = []

    def predict(cs):
        runs.append([c.path.stem for c in cs])
        return [(np.array([[3.0, 5.0, 20.0, 9.0]]), np.array([0.95])) for _ in cs]

    cfg = HardNegatives(match_iou=0.99)
    found = mine(predict, chips, chipset, cfg)
    assert runs and all(n.endswith("_r0") for n in runs[0])  # one forward pass per place
    twins = [n for n in found if n.endswith("_r90")]
    assert twins
    for n in twins:
        base = n[:-4] + "_r0"
        if base in found:
            _, turned = rotate_cw(np.zeros((128, 128)), np.asarray(found[base]), 1)
            assert np.allclose(found[n], turned)


@pytest.mark.slow
def test_hard_negatives_are_oversampled_and_kept_for_resume(chipset, tmp_path, monkeypatch):
    from insar_slide.training import mining
    from insar_slide.training.data import Chip, epoch_items, random_crop

    cfg = _cfg(chipset, tmp_path / "run", epochs=1, hard_negatives={"min_score": 0.01, "oversample": 3, "focus": 1.0})
    chips = [Chip(tmp_path / "a.tif", np.zeros((0, 4))), Chip(tmp_path / "b.tif", np.zeros((0, 4)), hard=np.array([[1, 1, 5, 5.0]]))]
    assert sorted(epoch_items(chips, cfg.hard_negatives.oversample).tolist()) == [0, 1, 1, 1]
    rate = np.arange(512 * 512, dtype="float32").reshape(512, 512)
    out, _, _ = random_crop(rate, np.zeros((0, 4)), size=64, rng=np.random.default_rng(0),
                            hard=np.array([[400, 420, 410, 430.0]]), focus=1.0)
    r0, c0 = divmod(int(out[0, 0]), 512)
    assert r0 <= 425 < r0 + 64 and c0 <= 405 < c0 + 64  # the false alarm is in the crop
    # A training run mines once, writes the list, and a resumed run reads it back instead.
    monkeypatch.setattr(mining, "false_alarms", lambda bx, sc, t, i, c: np.array([[2.0, 2.0, 30.0, 30.0]]))
    train(cfg)
    doc = json.loads((tmp_path / "run" / mining.FILE).read_text())
    assert doc["chips"] and doc["model"] == "random init"
    from insar_slide.training import train as train_module

    monkeypatch.setattr(train_module, "mine", lambda *a: pytest.fail("mined again on resume"))
    train(cfg.model_copy(update={"epochs": 2}), resume=True)
