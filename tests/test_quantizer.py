import math

import pytest
import torch

from dqcodec.entropy_models.prior import CodePrior
from dqcodec.latent_codecs.quantizer import DepthwiseQuantizer


@pytest.mark.parametrize("weight", [0.0, 0.3, 2.0])
def test_assignment_minimises_distortion_plus_weighted_bits(weight):
    """assign drops |v|^2 and the log-sum-exp from the cost; the choice must not change."""
    torch.manual_seed(0)
    quantizer = DepthwiseQuantizer(channels=8, groups=4, codebook_size=16)
    v = torch.randn(2, 4, 30, 2) * 2
    logits = torch.randn(2, 4, 30, 16) * 3
    rate_weight = torch.tensor(weight).reshape(1, 1, 1, 1)
    chosen = quantizer.assign(v, slice(None), logits, rate_weight)
    distortion = (v[..., None, :] - quantizer.codebooks[None, :, None]).pow(2).sum(-1)
    bits = -torch.log_softmax(logits, -1) / math.log(2.0)
    cost = distortion + weight * bits
    assert chosen.shape == (2, 4, 30)
    picked = cost.gather(-1, chosen[..., None]).squeeze(-1)
    assert torch.allclose(picked, cost.min(-1).values, atol=1e-5)
    if weight == 0.0:
        assert torch.equal(chosen, distortion.argmin(-1))


def test_assignment_takes_one_rate_weight_per_sample():
    torch.manual_seed(1)
    quantizer = DepthwiseQuantizer(channels=4, groups=2, codebook_size=8)
    v = torch.randn(1, 2, 50, 2).expand(2, -1, -1, -1)
    logits = torch.randn(1, 2, 50, 8).expand(2, -1, -1, -1) * 4
    chosen = quantizer.assign(v, slice(None), logits, torch.tensor([0.0, 50.0]).reshape(2, 1, 1, 1))
    assert torch.equal(
        chosen[0], quantizer.assign(v[:1], slice(None), None, torch.zeros(1, 1, 1, 1))[0]
    )
    assert torch.equal(chosen[1], logits[1].argmax(-1))  # a huge weight: the most probable code


def test_a_slices_anchor_pass_predicts_what_its_spatial_convolution_of_zeros_would():
    """The anchor pass adds the spatial convolution's bias instead of convolving zeros, and
    both passes of a slice share one projection of the conditioning: the prior's
    parameters are the ones the full computation gives."""
    torch.manual_seed(0)
    prior = CodePrior(
        cond_channels=5,
        channels=8,
        groups=4,
        codebook_size=16,
        slices=2,
        width=12,
        kernel=3,
        blocks=1,
    ).eval()
    cond = prior.condition(torch.randn(1, 5, 6, 7), torch.zeros(1, dtype=torch.long))
    y_hat = torch.randn(1, 8, 6, 7)
    y_hat[:, 4:] = 0  # slice 1 not decoded yet
    context = prior.contexts[1]
    with torch.no_grad():
        shared = prior.slice_inputs(1, cond, y_hat)
        mean, log_scale, _ = prior.params(1, shared, y_hat, anchors=True)
        h = prior.cond_proj[1](cond) + context.spatial(y_hat[:, 4:]) + context.channel(y_hat[:, :4])
        full = context.head(context.blocks(h))
    expected = full.reshape(1, 2, 2, 2, 6, 7).permute(0, 1, 4, 5, 2, 3)
    assert torch.allclose(mean, expected[..., 0, :], atol=1e-6)
    assert torch.allclose(log_scale, expected[..., 1, :].clamp(-4, 4), atol=1e-6)
