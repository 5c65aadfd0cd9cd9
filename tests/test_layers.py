import pytest
import torch
from compressai.layers import GDN

from dqcodec.layers import GDN as FusedGDN
from dqcodec.layers import SubpixelDeconv


@pytest.mark.parametrize("inverse", [False, True])
def test_fused_gdn_matches_compressai(inverse):
    torch.manual_seed(0)
    fused = FusedGDN(8, inverse=inverse)
    with torch.no_grad():
        fused.gamma.add_(0.1 * torch.rand_like(fused.gamma))
    reference = GDN(8, inverse=inverse)
    reference.load_state_dict(fused.state_dict())
    x = torch.randn(2, 8, 5, 7)
    with torch.no_grad():
        assert torch.allclose(fused(x), reference(x), atol=1e-6)


@pytest.mark.parametrize("size", [(5, 7), (1, 1), (4, 6)])
def test_subpixel_deconv_matches_transposed_convolution(size):
    torch.manual_seed(0)
    layer = SubpixelDeconv(6, 3).eval()
    x = torch.randn(2, 6, *size)
    expected = torch.nn.ConvTranspose2d.forward(layer, x)
    with torch.no_grad():
        fast = layer(x)
    assert fast.shape == expected.shape == (2, 3, 2 * size[0], 2 * size[1])
    assert torch.allclose(fast, expected, atol=1e-5)


def test_fast_paths_keep_gradients_under_autograd():
    layer = SubpixelDeconv(4, 3)
    x = torch.randn(1, 4, 3, 3, requires_grad=True)
    FusedGDN(3, inverse=True)(layer(x)).sum().backward()
    assert x.grad is not None and layer.weight.grad is not None


def test_subpixel_path_gives_the_transposed_convolutions_gradient_in_eval_mode():
    """The encoder search differentiates the image decoder in eval mode, through the subpixel
    path."""
    torch.manual_seed(0)
    layer = SubpixelDeconv(5, 3).eval()
    x = torch.randn(1, 5, 4, 6, requires_grad=True)
    target = torch.randn(1, 3, 8, 12)
    (fast,) = torch.autograd.grad((layer(x) - target).pow(2).sum(), [x])
    (reference,) = torch.autograd.grad(
        (torch.nn.ConvTranspose2d.forward(layer, x) - target).pow(2).sum(), [x]
    )
    assert not torch.equal(fast, reference)  # a different computation...
    assert torch.allclose(fast, reference, atol=1e-4)  # ...of the same gradient


@pytest.mark.parametrize("inverse", [False, True])
def test_frozen_gdn_gives_autograds_input_gradient(inverse):
    """Frozen parameters in eval mode (the encoder search) take FrozenGDN's own backward."""
    torch.manual_seed(0)
    reference = GDN(6, inverse=inverse).double()
    with torch.no_grad():
        reference.gamma.add_(0.1 * torch.rand_like(reference.gamma))
        reference.beta.add_(0.1 * torch.rand_like(reference.beta))
    frozen = FusedGDN(6, inverse=inverse).double()
    frozen.load_state_dict(reference.state_dict())
    frozen.eval().requires_grad_(False)
    x = torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    (expected,) = torch.autograd.grad((reference(x) * weights).sum(), [x])
    out = frozen(x)
    assert out.grad_fn is not None and "FrozenGDN" in type(out.grad_fn).__name__
    (got,) = torch.autograd.grad((out * weights).sum(), [x])
    assert torch.allclose(got, expected, atol=1e-12)


def test_gdn_with_trainable_parameters_keeps_their_gradients_in_eval_mode():
    layer = FusedGDN(3, inverse=True).eval()
    x = torch.randn(1, 3, 4, 4, requires_grad=True)
    layer(x).sum().backward()
    assert layer.gamma.grad is not None and layer.beta.grad is not None


@pytest.mark.parametrize("inverse", [False, True])
def test_gdn_trains_like_compressai(inverse):
    """Same state-dict keys, outputs and parameter gradients (the lower bound's custom gradient
    included) as compressai.layers.GDN, so weights and training runs move between them."""
    torch.manual_seed(0)
    ours = FusedGDN(6, inverse=inverse).train()
    with torch.no_grad():
        ours.beta[:3] = 0.0  # below beta's lower bound: only the bound's gradient rule moves it
        ours.gamma.add_(0.1 * torch.rand_like(ours.gamma))
    reference = GDN(6, inverse=inverse)
    assert list(reference.state_dict()) == list(ours.state_dict())
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 6, 4, 5)
    weights = torch.randn(2, 6, 4, 5)
    (ours(x) * weights).sum().backward()
    (reference(x) * weights).sum().backward()
    assert torch.allclose(ours.beta.grad, reference.beta.grad, atol=1e-6)
    assert torch.allclose(ours.gamma.grad, reference.gamma.grad, atol=1e-6)
    assert ours.beta.grad[:3].abs().sum() > 0 or reference.beta.grad[:3].abs().sum() == 0
