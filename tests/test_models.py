from pathlib import Path

import numpy as np
import pytest
import torch

from cxrlab.errors import ConfigError, WeightsError
from cxrlab.freeze import apply_freeze, parse_freeze
from cxrlab.models import create_model, forward_images, get_spec, list_models

SIZE = 32  # tiny inputs: every registered model must still build and run


@pytest.fixture(scope="module")
def built() -> dict:
    torch.manual_seed(0)
    return {name: create_model(name, 4, "none", image_size=SIZE) for name in list_models()}


@pytest.mark.parametrize("name", list_models())
def test_every_model_builds_runs_and_learns(built: dict, name: str) -> None:
    model = built[name]
    x = torch.randint(0, 256, (2, 1, SIZE, SIZE), dtype=torch.uint8)
    logits = model(x)
    assert logits.shape == (2, 4)
    logits.sum().backward()
    head = dict(model.net.named_parameters())[model.head[0]]
    assert head.grad is not None and head.grad.abs().sum() > 0
    # units cover every backbone parameter exactly once, head excluded
    unit_params = [p for u in model.units for p in u]
    assert len(unit_params) == len(set(unit_params))
    assert set(unit_params) | set(model.head) == {n for n, _ in model.net.named_parameters()}
    assert model.unit_names[0] == "stem" and len(model.unit_names) == len(model.units)
    model.zero_grad()


def test_forward_images_matches_a_direct_pass_and_restores_the_mode() -> None:
    torch.manual_seed(0)
    model = create_model("resnet18", 3, "none", image_size=32).train()
    images = np.random.default_rng(0).integers(0, 256, (7, 32, 32), dtype=np.uint8)
    rows = np.array([5, 0, 3])
    out = forward_images(model, images, rows, batch_size=2)  # three batches, one short
    assert model.training  # restored
    with torch.no_grad():
        direct = model.eval()(torch.from_numpy(images[rows])[:, None]).float()
    assert out.dtype == torch.float32 and out.shape == (3, 3)
    assert torch.allclose(out, direct, atol=1e-5)
    assert forward_images(model, images[:0]).numel() == 0


@pytest.mark.parametrize("name", list_models())
@pytest.mark.parametrize("policy", ["none", "head", "0.5", "0.75", "last:4"])
def test_freezing_policies_set_requires_grad(built: dict, name: str, policy: str) -> None:
    model = built[name]
    report = apply_freeze(model, policy)
    n = len(model.units)
    expected_frozen = {"none": 0, "head": n, "0.5": n // 2, "0.75": int(0.75 * n), "last:4": n - 4}[
        policy
    ]
    assert len(report.frozen_units) == expected_frozen
    params = dict(model.net.named_parameters())
    for i, unit in enumerate(model.units):
        for p in unit:
            assert params[p].requires_grad == (i >= expected_frozen), (p, policy)
    assert all(params[p].requires_grad for p in model.head)
    trainable = sum(p.numel() for p in params.values() if p.requires_grad)
    assert report.trainable_params == trainable
    assert report.total_params == sum(p.numel() for p in params.values())
    apply_freeze(model, "none")  # leave the shared model as found


def test_frozen_batchnorm_keeps_statistics_unless_asked() -> None:
    model = create_model("resnet18", 4, "none", image_size=SIZE)
    apply_freeze(model, "0.5")
    model.train()
    bn_stem, bn_late = model.net.bn1, model.net.layer4[1].bn2
    assert not bn_stem.training and bn_late.training
    before = bn_stem.running_mean.clone()
    model(torch.randint(0, 256, (4, 1, SIZE, SIZE), dtype=torch.uint8))
    assert torch.equal(bn_stem.running_mean, before)
    apply_freeze(model, "0.5", bn="update")
    model.train()
    assert bn_stem.training and not bn_stem.weight.requires_grad
    model(torch.randint(0, 256, (4, 1, SIZE, SIZE), dtype=torch.uint8))
    assert not torch.equal(bn_stem.running_mean, before)


@pytest.mark.parametrize("bad", ["half", "1.5", "last:x", "-0.5", "last:99"])
def test_bad_freeze_values(bad: str) -> None:
    model = create_model("resnet18", 4, "none", image_size=SIZE)
    with pytest.raises(ConfigError, match="freeze"):
        apply_freeze(model, bad)


def test_parse_freeze_roundtrip() -> None:
    assert str(parse_freeze("0.75")) == "0.75"
    assert str(parse_freeze("LAST:4")) == "last:4"
    assert parse_freeze("0").kind == "none"


def test_efficientnet_lite0_offline_imagenet_weights_are_real() -> None:
    """The package checkpoint maps strictly onto timm and recognises ImageNet photos."""
    import skimage.data
    import timm
    from PIL import Image
    from torchvision.models import ResNet18_Weights

    from cxrlab.models.weights import efficientnet_lite0_package_state_dict

    net = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    state = efficientnet_lite0_package_state_dict([len(s) for s in net.blocks])
    result = net.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    categories = ResNet18_Weights.IMAGENET1K_V1.meta["categories"]
    expected = {
        "chelsea": {"Egyptian cat", "tabby", "tiger cat"},
        "coffee": {"espresso", "cup", "coffee mug"},
    }
    for photo, labels in expected.items():
        rgb = Image.fromarray(getattr(skimage.data, photo)()).convert("RGB")
        x = torch.from_numpy(np.array(rgb.resize((224, 224), Image.BICUBIC)))
        x = (x.permute(2, 0, 1).float()[None] / 255 - 0.5) / 0.5  # timm cfg: mean=std=0.5
        with torch.no_grad():
            probs = net(x).softmax(-1)[0]
        assert categories[int(probs.argmax())] in labels, photo
        assert probs.max() > 0.5
    # and through the registry: a 4-class model whose backbone holds those weights
    model = create_model("efficientnet_lite0", 4, "imagenet", image_size=64)
    assert "offline" in model.weights_source
    assert torch.equal(model.net.conv_stem.weight, net.conv_stem.weight)


def test_imagenet_offline_error_is_actionable(monkeypatch) -> None:
    import torch.hub

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(WeightsError) as info:
        create_model("resnet18", 4, "imagenet")
    msg = str(info.value)
    assert "resnet18-f37072fd.pth" in msg and "--weights PATH" in msg and "\n" not in msg


def test_weights_from_local_files(tmp_path: Path) -> None:
    src = create_model("resnet18", 4, "none", image_size=SIZE)
    torch.save({"state_dict": src.net.state_dict()}, tmp_path / "r18.pth")
    loaded = create_model("resnet18", 4, tmp_path / "r18.pth", image_size=SIZE)
    for (k, a), b in zip(src.net.state_dict().items(), loaded.net.state_dict().values()):
        assert torch.equal(a, b), k
    # an ImageNet-shaped head is replaced, the backbone kept
    imagenet_like = dict(src.net.state_dict())
    imagenet_like["fc.weight"] = torch.zeros(1000, 512)
    imagenet_like["fc.bias"] = torch.zeros(1000)
    torch.save(imagenet_like, tmp_path / "in1k.pt")
    m = create_model("resnet18", 4, tmp_path / "in1k.pt", image_size=SIZE)
    assert "re-initialised" in m.weights_source
    assert torch.equal(m.net.conv1.weight, src.net.conv1.weight)


def test_weights_for_another_architecture_are_refused(tmp_path: Path) -> None:
    r34 = create_model("resnet34", 4, "none", image_size=SIZE)
    torch.save(r34.net.state_dict(), tmp_path / "r34.pt")
    with pytest.raises(WeightsError, match=r"do not fit resnet18: \d+ unexpected"):
        create_model("resnet18", 4, tmp_path / "r34.pt", image_size=SIZE)


def test_pickled_objects_are_never_loaded(tmp_path: Path) -> None:
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"state_dict": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(WeightsError, match="Cannot read weights"):
        create_model("resnet18", 4, tmp_path / "evil.pt", image_size=SIZE)
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(WeightsError, match="Cannot read weights"):
        create_model("resnet18", 4, tmp_path / "junk.safetensors", image_size=SIZE)


def test_unknown_names_and_values() -> None:
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        get_spec("resnet19")
    with pytest.raises(ConfigError, match="timm has no model"):
        get_spec("timm:not_a_model_at_all")
    with pytest.raises(ConfigError, match="'imagenet:K', 'pretrained:RUN' or an existing file"):
        create_model("resnet18", 4, "imagnet")
    with pytest.raises(ConfigError, match="224px"):
        create_model("vit_b_16", 4, "imagenet", image_size=128)
    m = create_model("timm:resnet10t", 3, "none", image_size=SIZE).eval()
    assert m(torch.zeros(1, 1, SIZE, SIZE, dtype=torch.uint8)).shape == (1, 3)
