"""ImageNet ResNet-18/34 with torchvision's names, and load_pretrained (models/pretrained.py).

The torchvision-format files here are written without our module: every key and shape comes from
torchvision's ResNet layout, and the features are checked against a functional forward written
from the state dict alone.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models import ModelSpec, build_classifier
from models.backbones import BACKBONES
from models.imagenet_resnet import imagenet_resnet18, imagenet_resnet34
from models.pretrained import PretrainedError, load_pretrained

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
CHANNELS = (64, 128, 256, 512)
# torchvision.models.resnet18/34: all parameters, and those of the 1000-class fc (512*1000 + 1000)
TORCHVISION_PARAMETERS = {18: 11_689_512, 34: 21_797_672}
FC_PARAMETERS = 513_000
BACKBONE_PARAMETERS = {18: 11_176_512, 34: 21_284_672}
CONSTRUCTORS = {18: imagenet_resnet18, 34: imagenet_resnet34}


def _bn_shapes(prefix: str, channels: int) -> dict[str, list[int]]:
    shapes = {f"{prefix}.{name}": [channels] for name in ("weight", "bias", "running_mean", "running_var")}
    return {**shapes, f"{prefix}.num_batches_tracked": []}


def torchvision_shapes(depth: int) -> dict[str, list[int]]:
    """torchvision.models.resnet{depth}().state_dict()'s keys and shapes, in its order."""
    shapes = {"conv1.weight": [64, 3, 7, 7], **_bn_shapes("bn1", 64)}
    previous = 64
    for stage, (channels, blocks) in enumerate(zip(CHANNELS, DEPTHS[depth]), start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            shapes[f"{prefix}.conv1.weight"] = [channels, previous, 3, 3]
            shapes.update(_bn_shapes(f"{prefix}.bn1", channels))
            shapes[f"{prefix}.conv2.weight"] = [channels, channels, 3, 3]
            shapes.update(_bn_shapes(f"{prefix}.bn2", channels))
            if block == 0 and stage > 1:
                shapes[f"{prefix}.downsample.0.weight"] = [channels, previous, 1, 1]
                shapes.update(_bn_shapes(f"{prefix}.downsample.1", channels))
            previous = channels
    return {**shapes, "fc.weight": [1000, 512], "fc.bias": [1000]}


def torchvision_state_dict(depth: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights in torchvision's layout; BN statistics far from the defaults 0 / 1."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in torchvision_shapes(depth).items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.randint(1, 10_000, (), generator=generator)
        elif key.endswith("running_var"):
            state[key] = 0.5 + 1.5 * torch.rand(shape, generator=generator)
        elif key.endswith(("running_mean", ".bias")) and key != "fc.bias":
            state[key] = 0.2 * torch.randn(shape, generator=generator)
        elif key.endswith("weight") and len(shape) == 1:  # BN scale
            state[key] = 0.5 + torch.rand(shape, generator=generator)
        else:  # conv / fc weights, He-scaled so activations stay O(1) through 34 layers
            fan_in = max(1, torch.Size(shape[1:]).numel())
            state[key] = torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    return state


def reference_features(state: dict[str, torch.Tensor], images: torch.Tensor, depth: int) -> torch.Tensor:
    """ResNet forward written from the state dict alone (no nn.Module)."""
    def bn(x: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], training=False, eps=1e-5)

    x = F.relu(bn(F.conv2d(images, state["conv1.weight"], stride=2, padding=3), "bn1"))
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, blocks in enumerate(DEPTHS[depth], start=1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            stride = 2 if stage > 1 and block == 0 else 1
            out = F.relu(bn(F.conv2d(x, state[f"{prefix}.conv1.weight"], stride=stride, padding=1),
                            f"{prefix}.bn1"))
            out = bn(F.conv2d(out, state[f"{prefix}.conv2.weight"], padding=1), f"{prefix}.bn2")
            identity = x
            if f"{prefix}.downsample.0.weight" in state:
                identity = bn(F.conv2d(x, state[f"{prefix}.downsample.0.weight"], stride=stride),
                              f"{prefix}.downsample.1")
            x = F.relu(out + identity)
    return F.adaptive_avg_pool2d(x, 1).flatten(1)  # B x 512


def save(tmp_path, state: object, name: str = "weights.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def refused(network: torch.nn.Module, path: Path) -> str:
    """load_pretrained's error message; the network's weights must be left as they were."""
    before = {key: value.clone() for key, value in network.state_dict().items()}
    with pytest.raises(PretrainedError) as excinfo:
        load_pretrained(network, path)
    after = network.state_dict()
    assert all(torch.equal(after[key], value) for key, value in before.items())
    return str(excinfo.value)


@pytest.mark.parametrize("depth", [18, 34])
def test_layout_is_torchvision_without_fc(depth):
    expected = torchvision_shapes(depth)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    assert sum(torch.Size(shape).numel() for key, shape in expected.items()
               if not key.endswith(buffers)) == TORCHVISION_PARAMETERS[depth]
    assert torch.Size(expected["fc.weight"]).numel() + expected["fc.bias"][0] == FC_PARAMETERS
    del expected["fc.weight"], expected["fc.bias"]

    network = BACKBONES[f"imagenet_resnet{depth}"](3, 1.0)
    assert {key: list(value.shape) for key, value in network.state_dict().items()} == expected
    assert list(network.state_dict()) == list(expected)  # same order too
    assert sum(p.numel() for p in network.parameters()) == BACKBONE_PARAMETERS[depth]
    assert network.embed_dim == 512
    assert not hasattr(network, "fc")


def test_width_and_channels():
    network = imagenet_resnet18(in_channels=1, width=0.25)
    assert network.conv1.weight.shape == (16, 1, 7, 7)
    assert network.embed_dim == 128
    assert imagenet_resnet18(width=0.01).embed_dim == 8  # at least 8 channels per stage
    features = network(torch.rand(3, 1, 40, 40))
    assert features.shape == (3, 128)


def test_init_is_torchvision():
    network = imagenet_resnet34()
    assert torch.equal(network.layer4[2].bn2.weight, torch.ones(512))  # no zero-init of last BN
    assert torch.equal(network.bn1.bias, torch.zeros(64))
    # kaiming_normal fan_out: std = sqrt(2 / (out_channels * k * k))
    std = network.layer3[1].conv1.weight.std().item()
    assert std == pytest.approx((2 / (256 * 9)) ** 0.5, rel=0.02)


@pytest.mark.parametrize("depth", [18, 34])
def test_torchvision_weights_give_the_reference_features(tmp_path, depth):
    state = torchvision_state_dict(depth)
    path = save(tmp_path, state)
    network = CONSTRUCTORS[depth]()

    report = load_pretrained(network, path)

    assert report == {"source": "torchvision", "loaded": len(state) - 2, "ignored": ["fc.weight", "fc.bias"]}
    counter = "layer2.0.downsample.1.num_batches_tracked"
    assert network.layer2[0].downsample[1].num_batches_tracked == state[counter]
    network.eval()
    for shape in ((2, 3, 64, 64), (2, 3, 48, 80)):
        images = torch.randn(shape)
        with torch.no_grad():
            features = network(images)
        expected = reference_features(state, images, depth)
        assert features.shape == (2, 512)
        assert expected.abs().max() > 0.1  # the comparison is not between two near-zero tensors
        torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
        assert (features >= 0).all()


@pytest.mark.parametrize("wrapper", ["state_dict", "model"])
def test_wrapped_state_dict(tmp_path, wrapper):
    state = torchvision_state_dict(18)
    network = imagenet_resnet18()
    report = load_pretrained(network, save(tmp_path, {wrapper: state, "epoch": 90}))
    assert report["source"] == "torchvision"
    assert report["loaded"] == 120
    assert torch.equal(network.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])


def test_old_torchvision_file_without_batch_counters(tmp_path):
    """torch < 0.4.1 wrote no num_batches_tracked (torchvision's first ResNet files)."""
    state = {key: value for key, value in torchvision_state_dict(18).items()
             if not key.endswith("num_batches_tracked")}
    network = imagenet_resnet18()
    report = load_pretrained(network, save(tmp_path, state))
    assert report["loaded"] == 100
    assert torch.equal(network.bn1.running_var, state["bn1.running_var"])
    assert network.bn1.num_batches_tracked == 0


def test_run_checkpoint(tmp_path):
    spec = ModelSpec(arch="imagenet_resnet18", in_channels=3, num_classes=4, head="linear",
                     mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    trained = build_classifier(spec)
    with torch.no_grad():
        trained.backbone.bn1.running_mean.uniform_(-1, 1)
    checkpoint = {"model_spec": spec.to_dict(), "state_dict": trained.state_dict(),
                  "class_names": ["a", "b", "c", "d"], "method": "softmax", "threshold": 0.5}
    head_keys = [key for key in trained.state_dict() if not key.startswith("backbone.")]
    assert head_keys  # head.*, mean, std

    network = imagenet_resnet18()
    report = load_pretrained(network, save(tmp_path, checkpoint, "model.pt"))

    assert report == {"source": "run checkpoint", "loaded": 120, "ignored": head_keys}
    expected = trained.backbone.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in network.state_dict().items())


def test_run_checkpoint_of_another_backbone(tmp_path):
    spec = ModelSpec(arch="resnet18", in_channels=3, num_classes=4, head="linear")
    checkpoint = {"model_spec": spec.to_dict(), "state_dict": build_classifier(spec).state_dict()}
    path = save(tmp_path, checkpoint, "model.pt")
    with pytest.raises(PretrainedError) as excinfo:
        load_pretrained(imagenet_resnet18(), path)
    assert str(excinfo.value) == f"{path} has no weight for conv1.weight (the layout of imagenet_resnet18)"


@pytest.mark.parametrize("file_depth, network, message", [
    (34, imagenet_resnet18, "{path}: unexpected key layer1.2.conv1.weight: weights of another architecture?"),
    (18, imagenet_resnet34,
     "{path} has no weight for layer1.2.conv1.weight (the torchvision layout of imagenet_resnet34)"),
    (18, lambda: imagenet_resnet18(in_channels=1),
     "conv1.weight is [64, 3, 7, 7] in {path}, the network has [64, 1, 7, 7]"),
    (18, lambda: imagenet_resnet18(width=0.5),
     "conv1.weight is [64, 3, 7, 7] in {path}, the network has [32, 3, 7, 7]"),
])
def test_wrong_architecture_is_refused_untouched(tmp_path, file_depth, network, message):
    path = save(tmp_path, torchvision_state_dict(file_depth))
    network = network()
    assert refused(network, path) == message.format(path=path)


@pytest.mark.parametrize("key, value, message", [
    ("layer4.1.bn2.bias", float("nan"), "layer4.1.bn2.bias in {path} has non-finite values (NaN or inf)"),
    ("layer3.0.conv1.weight", float("-inf"),
     "layer3.0.conv1.weight in {path} has non-finite values (NaN or inf)"),
    ("layer2.1.bn1.running_var", [1.0, 2.0], "layer2.1.bn1.running_var in {path} is a list, not a tensor"),
])
def test_bad_values_are_refused_untouched(tmp_path, key, value, message):
    """The bad tensor comes late in the key order: nothing before it is copied either."""
    state = torchvision_state_dict(18)
    if isinstance(value, float):
        state[key] = state[key].clone()
        state[key].view(-1)[3] = value
    else:
        state[key] = value
    path = save(tmp_path, state)
    network = imagenet_resnet18()
    assert refused(network, path) == message.format(path=path)


@pytest.mark.parametrize("content, message", [
    (b"conv1.weight = [[0.1, 0.2]]\n", "{path} is not a PyTorch weights file ("),
    (bytes(range(256)) * 8, "{path} is not a PyTorch weights file ("),
    (b"", "{path} is not a PyTorch weights file ("),
])
def test_unreadable_file_is_one_line(tmp_path, content, message):
    path = tmp_path / "weights.pth"
    path.write_bytes(content)
    network = imagenet_resnet18()
    error = refused(network, path)
    assert error.startswith(message.format(path=path)) and "\n" not in error


def test_pickled_module_is_refused(tmp_path):
    path = save(tmp_path, imagenet_resnet18(width=0.1))
    with pytest.raises(PretrainedError) as excinfo:
        load_pretrained(imagenet_resnet18(width=0.1), path)
    assert str(excinfo.value) == (f"{path} holds pickled objects, not only tensors "
                                  f"(a whole torch.save(model)? save model.state_dict())")


def test_missing_file(tmp_path):
    path = tmp_path / "absent.pth"
    with pytest.raises(PretrainedError, match="^cannot read .*absent.pth: No such file or directory$"):
        load_pretrained(imagenet_resnet18(), path)


@pytest.mark.parametrize("content, message", [
    (torch.zeros(3), "{path} holds a Tensor, not a state dict"),
    ([torch.zeros(3)], "{path} holds a list, not a state dict"),
    ({}, "{path} is not a state dict (no parameter names)"),
    ({0: torch.zeros(3)}, "{path} is not a state dict (no parameter names)"),
])
def test_not_a_state_dict(tmp_path, content, message):
    path = save(tmp_path, content)
    with pytest.raises(PretrainedError) as excinfo:
        load_pretrained(imagenet_resnet18(), path)
    assert str(excinfo.value) == message.format(path=path)
