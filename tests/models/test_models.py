"""Model registry: every model builds and runs, parameter counts match published numbers and
hand arithmetic, aliases resolve, bad input gives clear errors, init schemes have the right spread."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from prunelimit.models import INIT_SCHEMES, create_model, init_weights, list_models, model_info, register_model
from prunelimit.models import registry

# Smallest input each architecture takes (others default to CIFAR's 3x32x32).
SMALL_SHAPES = {
    "lenet5caffe": (1, 28, 28), "fc": (1, 8, 8), "fc12": (1, 8, 8), "fc_small": (1, 8, 8), "mlp": (1, 8, 8),
    "tiny_mlp": (1, 8, 8), "tiny_cnn": (2, 5, 5), "resnet18_cifar": (3, 8, 8), "resnet50_cifar": (3, 8, 8),
    "resnet32_cifar10": (3, 8, 8), "mobilenet_v2_cifar10": (3, 8, 8), "wide_resnet": (3, 8, 8),
    "wrn-16-8": (3, 8, 8), "wrn-16-10": (3, 8, 8), "wrn-22-8": (3, 8, 8), "wrn-28-8": (3, 8, 8),
}

REQUIRED = ["resnet50", "wrn-16-8", "wrn-16-10", "wrn-22-8", "wrn-28-8", "lenet5caffe", "mobilenet_v2",
            "mobilenet_v2_cifar10", "resnet50_cifar", "resnet32_cifar10", "efficientnet_b2", "fc", "fc12",
            "alexnet", "vgg16_bn", "resnet18_cifar", "fc_small", "mlp", "tiny_mlp", "tiny_cnn"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def meta_model(name: str, **kwargs) -> nn.Module:
    """Built on the meta device: real shapes, no memory, no init cost; for counting only."""
    with torch.device("meta"):
        return create_model(name, **kwargs)


def linear_count(widths: list[int]) -> int:
    return sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def conv_bn(cin: int, cout: int, k: int) -> int:
    """A bias-free k x k convolution followed by batch norm (weight + bias)."""
    return cin * cout * k * k + 2 * cout


# ---------------------------------------------------------------------------------------------
# every model builds and runs

@pytest.mark.parametrize("name", list_models())
def test_every_model_maps_a_batch_to_logits(name):
    shape = SMALL_SHAPES.get(name, (3, 32, 32))
    torch.manual_seed(0)
    model = create_model(name, num_classes=7, input_shape=shape)
    assert model.training  # create_model's shape check must not leave it in eval mode
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(2, *shape))
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()


def test_required_models_are_registered_and_listed_sorted():
    names = list_models()
    assert names == sorted(names)
    assert set(REQUIRED) <= set(names)


def test_default_num_classes():
    assert meta_model("resnet50").fc.out_features == 1000
    assert meta_model("wrn-28-8").fc.out_features == 10
    assert model_info("efficientnet_b2").default_num_classes == 1000
    assert model_info("fc_small").needs_input_shape and not model_info("vgg16_bn").needs_input_shape


# ---------------------------------------------------------------------------------------------
# parameter counts against published numbers and independent arithmetic

def test_torchvision_imagenet_counts_match_published():
    resnet = meta_model("resnet50")
    assert n_params(resnet) == 25_557_032
    weights = sum(m.weight.numel() for m in resnet.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert weights == 25_502_912
    assert n_params(meta_model("mobilenet_v2")) == 3_504_872
    assert n_params(meta_model("efficientnet_b2")) == 9_109_994
    assert n_params(meta_model("alexnet", num_classes=1000, variant="torchvision")) == 61_100_840


def wrn_count(depth: int, k: int, classes: int) -> int:
    """WRN-depth-k by hand: stem, three stages of pre-activation blocks, final BN, linear."""
    n = (depth - 4) // 6
    total = 3 * 16 * 9
    cin = 16
    for width in (16 * k, 32 * k, 64 * k):
        for b in range(n):
            c = cin if b == 0 else width
            total += 2 * c + c * width * 9 + 2 * width + width * width * 9  # bn1, conv1, bn2, conv2
            if c != width:
                total += c * width  # 1x1 projection
        cin = width
    return total + 2 * 64 * k + 64 * k * classes + classes


def test_wide_resnet_counts():
    wrn28 = n_params(meta_model("wrn-28-8"))
    assert wrn28 == wrn_count(28, 8, 10)
    assert abs(wrn28 / 1e6 - 23.35) < 0.005  # published 23.35 M (the GP paper's table: 23.34 M)
    wrn16 = n_params(meta_model("wrn-16-8"))
    assert wrn16 == wrn_count(16, 8, 10) and abs(wrn16 / 1e6 - 10.96) < 0.005
    assert n_params(meta_model("wrn-16-10")) == wrn_count(16, 10, 10)
    assert n_params(meta_model("wrn-22-8")) == wrn_count(22, 8, 10)
    assert abs(n_params(meta_model("wide_resnet")) / 1e6 - 36.5) < 0.05  # WRN-28-10, published 36.5 M
    assert n_params(meta_model("wrn-40-4")) == wrn_count(40, 4, 10)  # the general wrn-D-K spelling


def test_wide_resnet_has_6n_plus_4_convolutions():
    convs = [m for m in meta_model("wrn-16-8").modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16  # stem + 6n block convs + 3 projections, n = 2


def test_resnet32_count_and_option_a_shortcuts():
    model = meta_model("resnet32_cifar10")
    by_hand = conv_bn(3, 16, 3) + 64 * 10 + 10
    cin = 16
    for width in (16, 32, 64):
        for b in range(5):
            by_hand += conv_bn(cin if b == 0 else width, width, 3) + conv_bn(width, width, 3)
        cin = width
    assert n_params(model) == by_hand == 464_154
    assert abs(by_hand / 1e6 - 0.46) < 0.005  # He et al. 2016, Table 6
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == 32  # 6n + 2 layers; option A adds no 1x1 convolutions
    assert all(m.kernel_size == (3, 3) for m in weighted if isinstance(m, nn.Conv2d))


def test_lenet5caffe_count():
    model = create_model("lenet5caffe")
    weights = 20 * 1 * 25 + 50 * 20 * 25 + 800 * 500 + 500 * 10
    assert weights == 430_500
    assert sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))) == weights
    assert n_params(model) == weights + 20 + 50 + 500 + 10 == 431_080


def test_fully_connected_counts():
    assert n_params(create_model("fc_small", num_classes=10, input_shape=(1, 8, 8))) == \
        64 * 300 + 300 + 300 * 100 + 100 + 100 * 10 + 10 == 50_610
    assert n_params(create_model("fc", input_shape=(1, 28, 28))) == linear_count([784, 1000, 600, 300, 100, 10])
    fc12 = create_model("fc12", input_shape=(3, 32, 32))
    widths = [3072, 1000, 900, 800, 750, 700, 650, 600, 500, 400, 200, 100, 10]
    assert n_params(fc12) == linear_count(widths)
    assert sum(isinstance(m, nn.Linear) for m in fc12.modules()) == 12
    custom = create_model("mlp", num_classes=3, input_shape=(2, 3, 4), hidden=[5, 6])
    assert n_params(custom) == linear_count([24, 5, 6, 3])
    assert n_params(create_model("tiny_mlp", num_classes=10, input_shape=(1, 8, 8))) == linear_count([64, 16, 10])


def test_cifar_resnets_follow_from_torchvision_resnets():
    # Same stages as torchvision's ResNet-50, with a 3x3x3->64 stem instead of 7x7 and a 10-way head.
    expected_50 = 25_557_032 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - (2048 * 1000 + 1000) + (2048 * 10 + 10)
    assert n_params(meta_model("resnet50_cifar")) == expected_50 == 23_520_842
    # torchvision ResNet-18 has 11,689,512 parameters.
    expected_18 = 11_689_512 - 7 * 7 * 3 * 64 + 3 * 3 * 3 * 64 - (512 * 1000 + 1000) + (512 * 10 + 10)
    assert n_params(meta_model("resnet18_cifar")) == expected_18 == 11_173_962


def test_mobilenet_v2_cifar_count_follows_from_torchvision():
    # The CIFAR variant changes strides (no parameters) and adds: a 10-way head instead of 1000,
    # a 1x1 expansion conv + BN in the t=1 block, and 1x1 conv + BN projections in the stride-1
    # blocks whose width changes (32->16, 16->24, 64->96, 160->320).
    extra = (32 * 32 + 2 * 32) + sum(a * b + 2 * b for a, b in ((32, 16), (16, 24), (64, 96), (160, 320)))
    expected = 3_504_872 - (1280 * 1000 + 1000) + (1280 * 10 + 10) + extra
    assert n_params(meta_model("mobilenet_v2_cifar10")) == expected


def test_vgg16_bn_count_and_layout():
    model = meta_model("vgg16_bn")
    cfg = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    by_hand = sum(cin * cout * 9 + cout + 2 * cout for cin, cout in zip([3] + cfg[:-1], cfg)) + 512 * 10 + 10
    assert n_params(model) == by_hand
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13


def test_alexnet_paper_count():
    convs = [(3, 96, 11), (96, 256, 5), (256, 384, 3), (384, 384, 3), (384, 256, 3)]
    by_hand = sum(a * b * k * k + b for a, b, k in convs) + linear_count([256 * 5 * 5, 4096, 4096, 10])
    assert n_params(meta_model("alexnet")) == by_hand


# ---------------------------------------------------------------------------------------------
# architecture details

def _input_of(module: nn.Module, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    seen = []
    handle = module.register_forward_hook(lambda m, inp, out: seen.append((inp[0], out)))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return seen[0]


def test_alexnet_upsamples_cifar_by_seven_with_nearest_neighbour():
    model = create_model("alexnet", num_classes=10, input_shape=(3, 32, 32))
    x = torch.randn(2, 3, 32, 32)
    seen, _ = _input_of(model.features, model, x)
    assert torch.equal(seen, x.repeat_interleave(7, dim=2).repeat_interleave(7, dim=3))
    assert model.upsample == 7
    with torch.device("meta"):  # 224x224 needs no upsampling; an explicit factor wins over the default
        assert create_model("alexnet").upsample == 1
        assert create_model("alexnet", upsample=4).upsample == 4


def test_cifar_nets_keep_resolution_in_the_stem():
    x = torch.randn(1, 3, 32, 32)
    mobilenet = create_model("mobilenet_v2_cifar10")
    assert _input_of(mobilenet.layers, mobilenet, x)[1].shape == (1, 320, 4, 4)  # ImageNet variant: 1x1
    resnet = create_model("resnet18_cifar")
    assert _input_of(resnet.layer1, resnet, x)[0].shape == (1, 64, 32, 32)  # no stride-2 stem, no max-pool


def test_wide_resnet_dropout_is_active_in_training_only():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 8, 8)
    model = create_model("wrn-16-8", num_classes=10)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    assert torch.equal(model(x), model(x))
    still = create_model("wrn-16-8", num_classes=10, dropout=0.0).train()
    assert torch.allclose(still(x), still(x))


def test_input_channels_follow_input_shape():
    for name in ("resnet18_cifar", "resnet50", "vgg16_bn", "wrn-16-8", "efficientnet_b2", "tiny_cnn"):
        model = create_model(name, num_classes=4, input_shape=(1, 32, 32))
        first = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert first.in_channels == 1, name
    three = n_params(meta_model("efficientnet_b2"))
    one = n_params(create_model("efficientnet_b2", num_classes=1000, input_shape=(1, 32, 32)))
    assert three - one == 2 * 32 * 3 * 3  # the stem loses two input channels


def test_numpy_integers_are_accepted():
    model = create_model("tiny_mlp", num_classes=np.int64(4), input_shape=tuple(np.array([1, 2, 3])))
    assert model.fc2.out_features == 4 and model.fc1.in_features == 6


def test_shape_check_leaves_state_and_rng_alone():
    torch.manual_seed(1)
    model = create_model("tiny_cnn", num_classes=3, input_shape=(3, 6, 6))
    after_build = torch.rand(3)
    torch.manual_seed(1)
    create_model("tiny_cnn", num_classes=3)  # no input_shape: no shape check
    assert torch.equal(torch.rand(3), after_build)
    assert torch.count_nonzero(model.bn1.running_mean) == 0 and model.bn1.num_batches_tracked == 0


# ---------------------------------------------------------------------------------------------
# names and aliases

@pytest.mark.parametrize("alias, canonical", [("FC", "fc"), ("FC12", "fc12"), ("AlexNet", "alexnet"),
                                              ("VGG16", "vgg16_bn"), ("ResNet18", "resnet18_cifar"),
                                              ("ResNet50", "resnet50_cifar"), ("resnet50_cifar10", "resnet50_cifar")])
def test_aliases_resolve_to_the_same_architecture(alias, canonical):
    assert model_info(alias).name == canonical
    shape = (3, 32, 32) if model_info(canonical).needs_input_shape else None
    with torch.device("meta"):
        a = create_model(alias, num_classes=10, input_shape=shape) if shape else create_model(alias)
        b = create_model(canonical, num_classes=10, input_shape=shape) if shape else create_model(canonical)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


def test_original_resnet50_alias_is_the_cifar_net_not_torchvision():
    cifar, imagenet = meta_model("ResNet50"), meta_model("resnet50")
    assert cifar.conv1.kernel_size == (3, 3) and imagenet.conv1.kernel_size == (7, 7)


def test_model_info_fields():
    info = model_info("wrn-28-8")
    assert info.name == "wrn-28-8" and info.options == {"dropout": 0.3} and info.description
    info = model_info("wrn-40-4")
    assert "depth=40" in info.description and "widen_factor=4" in info.description


# ---------------------------------------------------------------------------------------------
# errors a user can cause

def test_unknown_name_lists_names_and_suggests_case_insensitively():
    with pytest.raises(ValueError) as err:
        create_model("Resnet50")
    msg = str(err.value)
    assert "'Resnet50'" in msg and "did you mean resnet50" in msg and "ResNet50 (= resnet50_cifar)" in msg
    assert "Valid names:" in msg and "wrn-28-8" in msg
    with pytest.raises(ValueError, match="did you mean alexnet or AlexNet"):
        create_model("ALEXNET")
    with pytest.raises(ValueError, match="did you mean vgg16_bn"):
        model_info("vgg16bn")
    with pytest.raises(ValueError, match="model name must be a string"):
        create_model(None)


def test_unknown_option_names_option_and_model():
    with pytest.raises(ValueError, match=r"unknown option 'dropuot' for model 'wrn-28-8' \(did you mean 'dropout'\?\)"):
        create_model("wrn-28-8", dropuot=0.1)
    with pytest.raises(ValueError, match="unknown option 'hidden' for model 'vgg16_bn'.*accepted options: none"):
        create_model("vgg16_bn", hidden=[3])
    with pytest.raises(ValueError, match="option 'depth' of model 'wrn-40-4' is fixed by the name"):
        create_model("wrn-40-4", depth=16)


@pytest.mark.parametrize("name", ["fc", "fc12", "fc_small", "mlp", "tiny_mlp"])
def test_fully_connected_nets_need_input_shape(name):
    with pytest.raises(ValueError, match=f"model '{name}' needs input_shape=\\(C, H, W\\)"):
        create_model(name, num_classes=10)


@pytest.mark.parametrize("shape", [(1, 8), (0, 8, 8), (1, 8.0, 8), (True, 8, 8), "1x8x8"])
def test_bad_input_shape(shape):
    with pytest.raises(ValueError, match="input_shape must be three positive integers"):
        create_model("tiny_cnn", input_shape=shape)


def test_inputs_too_small_for_the_architecture():
    with pytest.raises(ValueError, match=r"model 'vgg16_bn' cannot take inputs of shape input_shape=\(3, 16, 16\)"):
        create_model("vgg16_bn", input_shape=(3, 16, 16))
    with pytest.raises(ValueError, match="'lenet5caffe' needs inputs of at least 16x16"):
        create_model("lenet5caffe", input_shape=(1, 8, 8))
    with pytest.raises(ValueError, match="'alexnet' needs inputs of at least 65 pixels .* pass upsample=4"):
        create_model("alexnet", input_shape=(3, 64, 64))  # TinyImageNet: 64 * 4 = 256 would do
    with pytest.raises(ValueError, match="'alexnet' needs inputs of at least 63 pixels"):
        create_model("alexnet", input_shape=(3, 62, 62), variant="torchvision")


@pytest.mark.parametrize("num_classes", [0, -3, 2.0, True, "10"])
def test_bad_num_classes(num_classes):
    with pytest.raises(ValueError, match="num_classes must be a positive integer"):
        create_model("tiny_cnn", num_classes=num_classes)


@pytest.mark.parametrize("name, options, match", [
    ("wrn-30-8", {}, "depth .* must be 6n\\+4"),
    ("wide_resnet", {"widen_factor": 0}, "option 'widen_factor' of model 'wide_resnet' must be a positive integer"),
    ("wrn-28-8", {"dropout": 1.5}, "option 'dropout' of model 'wide_resnet' must be a probability"),
    ("mobilenet_v2", {"dropout": -0.1}, "option 'dropout' of model 'mobilenet_v2'"),
    ("alexnet", {"variant": "caffe"}, "option 'variant' of model 'alexnet' must be one of paper, torchvision"),
    ("alexnet", {"upsample": 0}, "option 'upsample' of model 'alexnet' must be a positive integer"),
    ("mlp", {"hidden": "300", "input_shape": (1, 8, 8)}, "option 'hidden' of model 'mlp' must be a list"),
    ("mlp", {"hidden": [300, 0], "input_shape": (1, 8, 8)}, "option 'hidden' of model 'mlp' must be a positive"),
])
def test_bad_model_options(name, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **options)


# ---------------------------------------------------------------------------------------------
# registering your own

@pytest.fixture
def clean_registry():
    saved = dict(registry._MODELS), dict(registry._ALIASES), list(registry._PATTERNS)
    yield
    registry._MODELS.clear(), registry._MODELS.update(saved[0])
    registry._ALIASES.clear(), registry._ALIASES.update(saved[1])
    registry._PATTERNS[:] = saved[2]


def test_register_custom_model(clean_registry):
    @register_model("test_linear", aliases=("TestLinear",), needs_input_shape=True, default_num_classes=3)
    def test_linear(num_classes, input_shape, bias=True):
        """A linear classifier for this test."""
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes, bias=bias))

    model = create_model("TestLinear", input_shape=(2, 2, 2), bias=False)
    assert model[1].weight.shape == (3, 8) and model[1].bias is None
    info = model_info("test_linear")
    assert info.aliases == ("TestLinear",) and info.options == {"bias": True}
    assert info.description == "A linear classifier for this test."
    assert "test_linear" in list_models() and "TestLinear" not in list_models()


def test_register_rejects_clashes_and_unlistable_factories(clean_registry):
    with pytest.raises(ValueError, match="model name 'FC' is already registered"):
        register_model("fc_other", aliases=("FC",))(lambda num_classes: nn.Identity())
    with pytest.raises(ValueError, match="must take a 'num_classes' argument"):
        register_model("no_classes")(lambda classes: nn.Identity())
    with pytest.raises(ValueError, match="must list its options explicitly"):
        register_model("var_kw")(lambda num_classes, **kw: nn.Identity())
    with pytest.raises(ValueError, match="must take an 'input_shape' argument"):
        register_model("no_shape", needs_input_shape=True)(lambda num_classes: nn.Identity())


# ---------------------------------------------------------------------------------------------
# weight initialisation

def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(64, 256, 3), nn.BatchNorm2d(256), nn.Flatten(), nn.Linear(4000, 2000))


def test_kaiming_normal_matches_he_fan_in():
    torch.manual_seed(0)
    net = _net()
    with torch.no_grad():
        net[1].weight.fill_(3.0), net[1].bias.fill_(2.0)
    assert init_weights(net, "kaiming_normal") is net
    conv, bn, linear = net[0], net[1], net[3]
    assert abs(linear.weight.std().item() / math.sqrt(2 / 4000) - 1) < 0.01  # 8 M samples
    assert abs(conv.weight.std().item() / math.sqrt(2 / (64 * 9)) - 1) < 0.02  # 147 k samples
    assert abs(linear.weight.mean().item()) < 1e-4
    assert torch.count_nonzero(linear.bias) == 0 and torch.count_nonzero(conv.bias) == 0
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_kaiming_uniform_bounds_and_spread():
    torch.manual_seed(0)
    linear = init_weights(_net(), "kaiming_uniform")[3]
    bound = math.sqrt(6 / 4000)
    assert linear.weight.abs().max().item() <= bound
    assert abs(linear.weight.std().item() / math.sqrt(2 / 4000) - 1) < 0.01


def test_default_scheme_leaves_weights_alone_and_unknown_scheme_fails():
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    init_weights(net, "default")
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert set(INIT_SCHEMES) == {"default", "kaiming_normal", "kaiming_uniform"}
    with pytest.raises(ValueError, match="unknown init scheme 'xavier'; valid schemes: default, kaiming_normal"):
        init_weights(net, "xavier")
