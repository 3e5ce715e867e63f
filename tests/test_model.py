"""The detector's variants, input encoding and checkpoints (random weights, CPU, small inputs)."""

import io
import zipfile

import numpy as np
import pytest
import torch

from insar_slide.errors import ConfigError, InputError
from insar_slide.model import (
    InputEncoding,
    ModelConfig,
    build_model,
    load_checkpoint,
    save_checkpoint,
)
from insar_slide.model.cbam import CBAM
from insar_slide.model.detector import load_pretrained

torch.set_num_threads(2)


def test_encoding_channels_and_nan_handling():
    rate = np.array([[np.nan, 0.0, 30.0, -120.0]], dtype=np.float32)
    x = InputEncoding(clip_mm_yr=60).encode(rate)
    assert x.shape == (3, 1, 4) and x.dtype == torch.float32
    np.testing.assert_allclose(x[0, 0].numpy(), [0, 0, 0.5, -1])
    np.testing.assert_allclose(x[1, 0].numpy(), [0, 0, 0.5, 1])
    np.testing.assert_allclose(x[2, 0].numpy(), [0, 1, 1, 1])


def test_cbam_shapes_and_attention_range():
    m = CBAM(64)
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad():
        y, att = m(x), m.channel(x)
    assert y.shape == x.shape
    assert 0 <= float(att.min()) and float(att.max()) <= 1


def test_spatial_gate_does_not_saturate_on_large_features():
    """The gate our first training run lost: ReLU features of large magnitude must not push the
    spatial attention to 0 everywhere (the batch norm before the sigmoid keeps it centred)."""
    torch.manual_seed(0)
    from insar_slide.model.cbam import SpatialAttention
    gate = SpatialAttention()
    with torch.no_grad():
        gate.conv.weight.fill_(-0.3)  # the sign the dead gate had learned
    x = torch.relu(torch.randn(4, 128, 32, 32)) * 50
    with torch.no_grad():
        att = gate.train()(x)
    assert 0.2 < float(att.mean()) < 0.8 and float(att.std()) > 0.05


@pytest.mark.parametrize("variant", ["r34", "r34_fpn", "r34_fpn_cbam"])
def test_variants_run_at_native_scale(variant):
    cfg = ModelConfig(variant=variant, tile_size=128, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50)
    model = build_model(cfg)
    names = dict(model.backbone.named_modules()) if variant != "r34" else dict(model.backbone.named_children())
    assert any("cbam" in n for n in names) == (variant == "r34_fpn_cbam")
    model.eval()
    img = cfg.encoding.encode(np.random.default_rng(0).normal(0, 10, (128, 96)).astype("float32"))
    with torch.no_grad():
        images, _ = model.transform([img])
        out = model([img])
    assert tuple(images.image_sizes[0]) == (128, 96)  # no resize to 800 px
    assert set(out[0]) == {"boxes", "labels", "scores"}
    model.train()
    target = {"boxes": torch.tensor([[10.0, 20.0, 40.0, 60.0]]), "labels": torch.tensor([1])}
    losses = model([img], [target])
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    sum(losses.values()).backward()


def test_unknown_variant_is_refused():
    with pytest.raises(ConfigError, match="r34_fpn_cbam"):
        ModelConfig(variant="r50")


def test_checkpoint_round_trip_fp16_and_variant_check(tmp_path):
    cfg = ModelConfig(tile_size=128)
    model = build_model(cfg).eval()
    path = save_checkpoint(model, cfg, tmp_path / "m.safetensors", extra={"metrics": {"map50": 0.5}}, half=True)
    assert (tmp_path / "m.json").is_file()
    back, cfg2, meta = load_checkpoint(path, expect=cfg)
    assert cfg2 == cfg and meta["metrics"] == {"map50": 0.5}
    a, b = model.state_dict(), back.state_dict()
    for k in a:
        if a[k].is_floating_point():
            torch.testing.assert_close(b[k], a[k].half().float())
    with pytest.raises(InputError, match="variant"):
        load_checkpoint(path, expect=ModelConfig(variant="r34_fpn", tile_size=128))
    with pytest.raises(InputError, match="encoding"):
        load_checkpoint(path, expect=ModelConfig(tile_size=128, encoding=InputEncoding(clip_mm_yr=30)))


def test_pickle_files_are_refused_without_unpickling(tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle code ran')",))

    bad = tmp_path / "evil.safetensors"
    torch.save({"w": torch.zeros(1), "x": Boom()}, bad)  # a zip with a code-running pickle
    assert zipfile.is_zipfile(bad)
    with pytest.raises(InputError, match="never unpickles"):
        load_checkpoint(bad)
    raw = tmp_path / "raw.safetensors"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buf, _use_new_zipfile_serialization=False)
    raw.write_bytes(buf.getvalue())
    with pytest.raises(InputError, match="never unpickles"):
        load_checkpoint(raw)


def test_truncated_checkpoint_is_refused(tmp_path):
    cfg = ModelConfig(variant="r34", tile_size=64)
    path = save_checkpoint(build_model(cfg), cfg, tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(path.read_bytes()[:100_000])
    with pytest.raises(InputError, match="truncated"):
        load_checkpoint(cut)


def test_load_pretrained_reports_what_fits(tmp_path):
    import torchvision
    imagenet = torchvision.models.resnet34(weights=None).state_dict()
    imagenet["conv1.weight"] = torch.full_like(imagenet["conv1.weight"], 0.5)
    f = tmp_path / "resnet34.pth"
    torch.save(imagenet, f)
    model = build_model(ModelConfig())
    rep = load_pretrained(model, f)
    assert "backbone.body.conv1.weight" in rep["loaded"] and "fc.weight" in rep["unused"]
    assert float(model.backbone.body.conv1.weight.detach().mean()) == pytest.approx(0.5)
    assert any("cbam" in k for k in rep["missing"])  # CBAM and the heads stay random


def test_load_pretrained_from_own_checkpoint_for_a_second_round(tmp_path):
    """init_weights may name one of our safetensors checkpoints (fp16 export included)."""
    src = build_model(ModelConfig())
    path = tmp_path / "first.safetensors"
    save_checkpoint(src, ModelConfig(), path)
    model = build_model(ModelConfig())
    rep = load_pretrained(model, path)
    assert not rep["missing"] and not rep["shape_mismatch"]
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k


def test_safetensors_whose_header_length_starts_with_0x80_is_not_taken_for_a_pickle(tmp_path):
    """The low byte of the header length is the file's first byte: 0x80 is also pickle's mark."""
    import json as _json
    import struct

    from insar_slide.model.checkpoint import read_metadata
    meta = {"insar_slide": _json.dumps({"format": "insar-slide-checkpoint/1", "model": {}})}
    header = {"__metadata__": meta, "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}
    raw = _json.dumps(header).encode()
    raw += b" " * ((0x80 - len(raw)) % 256)  # pad the header to a length ending in 0x80
    path = tmp_path / "m.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0\0\0\0")
    assert path.read_bytes()[0] == 0x80
    assert read_metadata(path)["format"] == "insar-slide-checkpoint/1"


def test_checkpoints_from_before_the_spatial_bn_still_load(tmp_path):
    """A checkpoint whose metadata has no cbam_spatial_bn was written without the gate's BN."""
    old = ModelConfig(tile_size=128, cbam_spatial_bn=False)
    path = save_checkpoint(build_model(old), old, tmp_path / "old.safetensors")
    import json as _json
    card = _json.loads((tmp_path / "old.json").read_text())
    del card["model"]["cbam_spatial_bn"]
    assert ModelConfig.from_dict(card["model"]) == old
    model, cfg, _ = load_checkpoint(path)
    assert cfg.cbam_spatial_bn is False and not hasattr(model.backbone.body.cbam2.spatial.bn, "running_mean")


def test_shipped_reference_model_loads_and_carries_its_threshold():
    from insar_slide.model.checkpoint import read_metadata
    from insar_slide.run.config import REFERENCE_MODEL
    _model, cfg, meta = load_checkpoint(REFERENCE_MODEL)
    assert cfg.variant == "r34_fpn_cbam" and cfg.cbam_spatial_bn
    assert 0 < read_metadata(REFERENCE_MODEL)["score_threshold"] < 1
    assert REFERENCE_MODEL.stat().st_size < 80 * 2**20 and meta["metrics_heldout"]["AP50"] > 0.7


def test_pick_device_auto_cpu_and_a_missing_cuda():
    from insar_slide.model.device import pick_device

    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            pick_device("cuda")


def test_score_threshold_comes_from_config_then_model_then_training_config():
    from insar_slide.model.checkpoint import resolve_score_threshold

    card = {"score_threshold": 0.7, "training_config": {"score_threshold": 0.6}}
    assert resolve_score_threshold(0.3, card) == 0.3
    assert resolve_score_threshold(None, card) == 0.7
    assert resolve_score_threshold(None, {"training_config": {"score_threshold": 0.6}}) == 0.6
    assert resolve_score_threshold(None, {}) == 0.5
    # export-model sets a new operating point: its default is the training config's
    assert resolve_score_threshold(None, card, use_model_value=False) == 0.6
    assert resolve_score_threshold(0.8, card, use_model_value=False) == 0.8


# ---------------------------------------------------------------- inference precision and proposals (issue 19)

ZEN4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512_vnni\n"
XEON = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n"
GRAVITON = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


def test_native_bf16_is_read_from_the_cpu_flags():
    from insar_slide.model.device import cpu_has_native_bf16

    assert cpu_has_native_bf16(ZEN4) and cpu_has_native_bf16(GRAVITON)
    assert not cpu_has_native_bf16(XEON) and not cpu_has_native_bf16("")


def test_precision_auto_picks_bf16_only_where_it_is_native():
    from insar_slide.model.device import autocast_dtype, pick_precision

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert pick_precision("auto", cpu, native_bf16=True) == "bf16"
    assert pick_precision("auto", cpu, native_bf16=False) == "fp32"
    assert pick_precision("auto", cuda, cuda_bf16=True) == "bf16"
    assert pick_precision("auto", cuda, cuda_bf16=False) == "fp16"
    assert pick_precision("fp32", cuda) == "fp32" and pick_precision("bf16", cpu, native_bf16=False) == "bf16"
    with pytest.raises(InputError, match="fp16 is for CUDA"):
        pick_precision("fp16", cpu)
    with pytest.raises(InputError, match="use auto, fp32"):
        pick_precision("int8", cpu)
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") is torch.bfloat16


def test_inference_settings_reach_the_model_and_boxes_stay_fp32():
    from insar_slide.run.detect import apply_inference_settings

    model = build_model(ModelConfig()).eval()
    apply_inference_settings(model, proposals=300, detections=50, precision="bf16")
    assert model.rpn.post_nms_top_n() == 300 and model.rpn.pre_nms_top_n() == 1000
    assert model.roi_heads.detections_per_img == 50
    x = torch.zeros(3, 256, 256)
    x[:, 100:140, 80:130] = 1.0
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        det = model([x])[0]
    assert det["boxes"].float().dtype == torch.float32 and len(det["boxes"]) <= 50


def test_batchnorm_folded_into_the_convolutions_gives_the_same_detections():
    from pathlib import Path

    from insar_slide.model.detector import fold_batchnorm
    from insar_slide.run.detect import apply_inference_settings

    model, cfg, _ = load_checkpoint(Path(__file__).parents[1] / "models" / "insar_slide_r34_fpn_cbam.safetensors")
    rate = np.random.default_rng(3).normal(0, 3, (256, 256)).astype("float32")
    yy, xx = np.mgrid[0:256, 0:256]
    rate[((yy - 120) / 30) ** 2 + ((xx - 100) / 18) ** 2 <= 1] = -45.0
    rate[((yy - 40) / 12) ** 2 + ((xx - 200) / 10) ** 2 <= 1] = -30.0
    x = cfg.encoding.encode(rate)
    with torch.inference_mode():
        before = model([x])[0]
        folded = fold_batchnorm(model)
        after = folded([x])[0]
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert len(before["boxes"]) > 0 and len(after["boxes"]) == len(before["boxes"])
    torch.testing.assert_close(after["boxes"], before["boxes"], atol=0.05, rtol=0)
    torch.testing.assert_close(after["scores"], before["scores"], atol=1e-4, rtol=0)
    with torch.inference_mode():  # and as run uses it: folded, channels-last weights
        optimized = apply_inference_settings(folded)([x])[0]
    assert folded.backbone.body.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(optimized["boxes"], before["boxes"], atol=0.05, rtol=0)
    torch.testing.assert_close(optimized["scores"], before["scores"], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(build_model(ModelConfig()).train())
