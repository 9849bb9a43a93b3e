"""The SCN's structure and shapes against hand-computed values, and checkpoint loading."""
import tempfile
from pathlib import Path

import pytest
import torch

from helpers.checkpoint import load_checkpoint, to_spconv1_state
from helpers.config import get_config
from helpers.errors import WorkbookError
from helpers.model import build_scn, pick_device, place, spatial_shapes
from tests.conftest import random_voxels


def run(model, voxels, coords):
    with torch.no_grad():
        return model(voxels, coords)


def stage_shapes(model, voxels, coords):
    """Spatial shapes and voxel counts seen after conv_input, each stage and conv_out (forward hooks)."""
    seen = []
    names = ["conv_input"] + [f"encoder_layers.encoder_layer{i}" for i in range(1, 5)] + ["conv_out"]
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, i, o: seen.append(list(o.spatial_shape))) for n in names]
    try:
        out = run(model, voxels, coords)
    finally:
        for h in handles:
            h.remove()
    return seen, out


@pytest.mark.parametrize("grid,bev", [("bevfusion-0075", 180), ("bevfusion-01", 128)])
def test_stage_shapes_and_output(grid, bev):
    cfg = get_config(grid)
    model = place(build_scn(cfg), "cpu")
    voxels, coords = random_voxels(cfg, n=1500)
    seen, out = stage_shapes(model, voxels, coords)
    g = cfg.grid_xyz[0]
    # conv_input, stages 1-3 (each ends with a stride-2 conv), stage 4 (no down-sampling), conv_out
    assert seen == [[g, g, 41], [g // 2, g // 2, 21], [g // 4, g // 4, 11], [g // 8, g // 8, 5], [g // 8, g // 8, 5],
                    [g // 8, g // 8, 2]]
    assert spatial_shapes(cfg) == seen[:4] + seen[5:]
    assert list(out.shape) == [1, 256, bev, bev]
    assert torch.isfinite(out).all() and out.abs().sum() > 0


def test_structure_matches_bevfusion():
    model = build_scn(get_config())
    names = dict(model.named_modules())
    convs = [n for n, m in names.items() if type(m).__name__ in ("SubMConv3d", "SparseConv3d")]
    assert len(convs) == 21
    assert sum(p.numel() for p in model.parameters()) == 2_694_352  # about 2.69 M as in BEVFusion
    assert names["conv_input.0"].indice_key == "subm1"
    assert names["encoder_layers.encoder_layer1.0.conv1"].indice_key == "subm1"
    assert names["encoder_layers.encoder_layer3.2.0"].padding == [1, 1, 0]
    assert names["encoder_layers.encoder_layer3.2.0"].indice_key == "spconv3"
    assert names["conv_out.0"].kernel_size == [1, 1, 3] and names["conv_out.0"].stride == [1, 1, 2]
    assert names["conv_out.0"].indice_key == "spconv_down2"
    assert "encoder_layers.encoder_layer4.2" not in names  # the last stage has no down-sampling conv
    bn = names["encoder_layers.encoder_layer2.1.bn2"]
    assert bn.eps == 1e-3 and bn.momentum == 0.01


def test_zyx_model_gives_the_same_bev_map():
    xyz, zyx = get_config(layout="xyz"), get_config(layout="zyx")
    a = place(build_scn(xyz), "cpu")
    b = place(build_scn(zyx), "cpu")
    load_checkpoint_state(b, to_spconv1_state(a))
    assert b.conv_out[0].kernel_size == [3, 1, 1] and b.sparse_shape == [41, 1440, 1440]
    voxels, coords = random_voxels(xyz, n=1500)
    out_a = run(a, voxels, coords)
    out_b = run(b, voxels, coords[:, [0, 3, 2, 1]].contiguous())
    assert torch.allclose(out_a, out_b, atol=1e-5, rtol=1e-4)


def load_checkpoint_state(model, state):
    """Load `state` through a real checkpoint file, as a user would."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "ckpt.pth"
        torch.save({"state_dict": state}, path)
        load_checkpoint(model, path)


@pytest.mark.parametrize("prefix", ["encoders.lidar.backbone.", "pts_middle_encoder.", ""])
def test_checkpoint_forms_round_trip(tmp_path, prefix):
    cfg = get_config()
    source = build_scn(cfg)
    for p in source.parameters():  # weights unlike build_scn's, so loading is visible
        p.data.normal_(0, 0.05)
    target = place(build_scn(cfg), "cpu")
    if prefix == "pts_middle_encoder.":  # mmdet3d 1.x with spconv 2.x layout
        state = {prefix + k: v for k, v in source.state_dict().items()}
    else:  # spconv 1.x layout [k, k, k, Cin, Cout]
        state = to_spconv1_state(source, prefix)
    state["unrelated.head.weight"] = torch.zeros(3)  # other parts of the detector are ignored
    torch.save({"state_dict": state, "meta": {"epoch": 1}}, tmp_path / "ckpt.pth")
    load_checkpoint(target, tmp_path / "ckpt.pth")
    place(source, "cpu")
    voxels, coords = random_voxels(cfg, n=1200)
    assert torch.equal(run(source, voxels, coords), run(target, voxels, coords))


def test_checkpoint_errors_name_the_file_and_keys(tmp_path):
    model = build_scn(get_config())
    with pytest.raises(WorkbookError, match="missing.pth: checkpoint file not found"):
        load_checkpoint(model, tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a pickle at all")
    with pytest.raises(WorkbookError, match="junk.pth: not a checkpoint"):
        load_checkpoint(model, tmp_path / "junk.pth")
    torch.save({"head.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(WorkbookError, match="other.pth: no lidar backbone keys"):
        load_checkpoint(model, tmp_path / "other.pth")
    state = dict(model.state_dict())
    del state["conv_out.1.running_var"]
    state["conv_out.9.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pth")
    with pytest.raises(WorkbookError, match=r"missing \['conv_out.1.running_var'\].*unexpected \['conv_out.9.weight'\]"):
        load_checkpoint(model, tmp_path / "partial.pth")
    state = dict(build_scn(get_config("bevfusion-01")).state_dict())
    state["conv_input.0.weight"] = torch.zeros(16, 3, 3, 3, 4)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WorkbookError, match=r"shape.pth: conv_input.0.weight has shape \[16, 3, 3, 3, 4\]"):
        load_checkpoint(model, tmp_path / "shape.pth")


def test_device_choice():
    assert pick_device("cpu").type == "cpu"
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(WorkbookError, match="no CUDA GPU"):
            pick_device("cuda")
    model = place(build_scn(get_config()), "cpu", torch.float16)  # spconv's Native algorithm does fp16 on the CPU
    assert next(model.parameters()).dtype == torch.float16
