"""load_pretrained: a torchvision/timm-style state dict from a local file, its keys mapped, the report."""

import logging

import pytest
import torch

from fusefn import Rng, models
from fusefn.errors import ConfigError
from fusefn.models.pretrained import RESNET_KEYS, LoadReport, load_pretrained, map_keys, read_state_dict


def torchvision_resnet18_state(num_classes=1000, seed=0) -> dict:
    """The names and shapes of ``torchvision.models.resnet18().state_dict()``, written out from its layout."""
    g = torch.Generator().manual_seed(seed)
    out = {}

    def bn(prefix, c):
        out[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        out[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
        out[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        out[f"{prefix}.running_var"] = 1 + torch.rand(c, generator=g)
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    def conv(name, cout, cin, k):
        out[name] = 0.05 * torch.randn(cout, cin, k, k, generator=g)

    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for i, planes in enumerate((64, 128, 256, 512)):
        for j in range(2):
            p = f"layer{i + 1}.{j}"
            conv(f"{p}.conv1.weight", planes, cin, 3)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2.weight", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            if j == 0 and i > 0:
                conv(f"{p}.downsample.0.weight", planes, cin, 1)
                bn(f"{p}.downsample.1", planes)
            cin = planes
    out["fc.weight"] = 0.01 * torch.randn(num_classes, 512, generator=g)
    out["fc.bias"] = torch.zeros(num_classes)
    return out


@pytest.fixture(scope="module")
def net():
    model = models.Model(
        backbone=models.ResNet18(in_channels=3), heads=(models.ClassifierHead(name="head_0", num_classes=2),)
    )
    return model, *models.init(model, rng=Rng(0))


def test_torchvision_resnet18_loads_with_the_resnet_key_map(tmp_path, net, caplog):
    model, params, buffers = net
    state = torchvision_resnet18_state()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save(state, path)
    with caplog.at_level(logging.INFO, logger="fusefn.models"):
        p, b, report = load_pretrained(params, buffers, path, key_map=RESNET_KEYS, ignore_missing=["heads.*"])
    assert isinstance(report, LoadReport)
    assert set(report.missing) == {"heads.head_0.out.weight", "heads.head_0.out.bias"}
    assert report.unexpected == () and report.shape_mismatch == ()
    assert set(report.skipped) == {"fc.weight", "fc.bias"}
    assert len(report.loaded) == len(state) - 2
    assert "loaded 120 tensors" in caplog.text
    torch.testing.assert_close(p["backbone.layer3.0.downsample.0.weight"], state["layer3.0.downsample.0.weight"])
    torch.testing.assert_close(b["backbone.layer4.1.bn2.running_var"], state["layer4.1.bn2.running_var"])
    assert torch.equal(p["heads.head_0.out.weight"], params["heads.head_0.out.weight"])  # the new head is kept
    assert not torch.equal(params["backbone.conv1.weight"], p["backbone.conv1.weight"])  # inputs untouched
    # the model runs on the loaded weights
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out, _ = models.apply(model, p, b, {"data": {"input": {"img": x}}}, train=False)
    assert torch.isfinite(out["model"]["head_0"]["logits"]).all()


def test_strict_names_missing_unexpected_and_mismatched(net):
    _, params, buffers = net
    state = torchvision_resnet18_state()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    state["extra.weight"] = torch.zeros(3)
    with pytest.raises(ConfigError, match=r"missing from the file .*heads\.head_0\.out\.weight"):
        load_pretrained(params, buffers, state, key_map=RESNET_KEYS)
    with pytest.raises(ConfigError, match=r"unexpected in the file .*backbone\.extra\.weight") as e:
        load_pretrained(params, buffers, state, key_map=RESNET_KEYS, ignore_missing=["heads.*"])
    assert "backbone.layer1.0.conv1.weight model (64, 64, 3, 3) file (64, 64, 1, 1)" in str(e.value)
    p, _, report = load_pretrained(params, buffers, state, key_map=RESNET_KEYS, strict=False)
    assert report.shape_mismatch == (("backbone.layer1.0.conv1.weight", (64, 64, 3, 3), (64, 64, 1, 1)),)
    assert report.unexpected == ("backbone.extra.weight",) and not report.ok
    assert torch.equal(p["backbone.layer1.0.conv1.weight"], params["backbone.layer1.0.conv1.weight"])


def test_key_maps_as_dict_function_and_regex_pairs():
    keys = ["module.conv.weight", "module.fc.bias"]
    assert map_keys(keys, {"module.fc.bias": None}) == {
        "module.conv.weight": "module.conv.weight",
        "module.fc.bias": None,
    }
    assert map_keys(keys, lambda k: k.removeprefix("module.")) == {
        "module.conv.weight": "conv.weight",
        "module.fc.bias": "fc.bias",
    }
    assert (
        map_keys(keys, [(r"^module\.", ""), (r"^conv", "backbone.conv")])["module.conv.weight"]
        == "backbone.conv.weight"
    )
    with pytest.raises(ConfigError, match="key_map"):
        map_keys(keys, 3)


def test_a_file_with_pickled_objects_is_refused_and_wrappers_are_unwrapped(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("ran code",))

    bad = tmp_path / "bad.pt"
    torch.save({"w": torch.ones(1), "obj": Evil()}, bad)
    with pytest.raises(ConfigError, match="weights-only"):
        read_state_dict(bad)
    good = tmp_path / "timm.pth.tar"
    torch.save({"state_dict": {"w": torch.ones(2)}, "epoch": 3}, good)
    assert list(read_state_dict(good)) == ["w"]
    with pytest.raises(ConfigError, match="does not exist"):
        read_state_dict(tmp_path / "none.pt")
    with pytest.raises(ConfigError, match="nothing in"):
        load_pretrained({"a": torch.zeros(2)}, {}, good, strict=False)


def test_safetensors_files_need_the_package_or_load(tmp_path):
    path = tmp_path / "w.safetensors"
    try:
        from safetensors.torch import save_file
    except ImportError:
        path.write_bytes(b"\0")
        with pytest.raises(ConfigError, match="safetensors"):
            read_state_dict(path)
        return
    save_file({"w": torch.ones(2)}, str(path))
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))
