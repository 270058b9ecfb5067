import torch
from torch import nn

from raycifar.recipe.model import CustomResNet, ResLayer, count_parameters


def test_parameter_count_matches_spec():
    assert count_parameters(CustomResNet()) == 6_573_120


def test_no_biases_in_convs_or_fc():
    for m in CustomResNet().modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m.bias is None


def stage_shapes(net: CustomResNet) -> list[tuple[int, ...]]:
    """The (channels, height, width) after each stage, for two 32x32 images."""
    x, shapes = torch.randn(2, 3, 32, 32), []
    for stage in (net.prep, net.layer1, net.layer2, net.layer3, net.pool):
        x = stage(x)
        shapes.append(tuple(x.shape[1:]))
    return shapes


def test_shapes_through_each_stage():
    assert stage_shapes(CustomResNet().eval()) == [(64, 32, 32), (128, 16, 16), (256, 8, 8),
                                                   (512, 4, 4), (512, 1, 1)]


def test_conv_then_pool_then_bn_order():
    kinds = [type(m).__name__ for m in CustomResNet().layer1.conv]
    assert kinds == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"]


def test_res_layer_adds_block_output_to_its_input():
    layer = ResLayer(8, 16).eval()
    x = torch.randn(1, 8, 8, 8)
    X = layer.conv(x)
    torch.testing.assert_close(layer(x), X + layer.res(X))
    kinds = [type(m).__name__ for unit in layer.res for m in unit]
    assert kinds == ["Conv2d", "BatchNorm2d", "ReLU"] * 2


def test_returns_scaled_logits_not_probabilities():
    torch.manual_seed(0)
    a = CustomResNet(logit_scale=1.0).eval()
    b = CustomResNet(logit_scale=0.125).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 3, 32, 32)
    la, lb = a(x), b(x)
    assert la.shape == (4, 10)
    torch.testing.assert_close(lb, la * 0.125)
    assert not torch.allclose(la.sum(1), torch.ones(4))  # not a softmax


def test_the_default_width_is_the_spec_and_others_scale_every_layer_alike():
    from raycifar.recipe.config import TrainConfig

    assert TrainConfig().width == 64
    net = CustomResNet(10, width=16).eval()
    assert stage_shapes(net) == [(16, 32, 32), (32, 16, 16), (64, 8, 8), (128, 4, 4),
                                 (128, 1, 1)]
    # Convs and BN scale with width squared and width: the spec's count at width 64 only.
    assert count_parameters(net) == 412_944
