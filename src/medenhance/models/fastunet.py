"""A small three-scale U-Net that runs at half resolution: the fast CPU denoiser.

The FFDNet idea (K. Zhang, W. Zuo, L. Zhang, IEEE TIP 27(9), 2018, doi:10.1109/TIP.2018.2839891):
pixel-unshuffle the image into four half-resolution channels plus a noise-level map, so that every
convolution touches a quarter of the pixels. FFDNet then uses a plain stack of convolutions, whose
receptive field grows slowly; here the half-resolution features go through a small U-Net (two
strided down-samplings, additive skips, no batch norm, as in DRUNet) so that a 512x512 image is seen
through a ~100-pixel window at about the cost of an 8-layer plain stack. Measured on a 2-core CPU
(512x512, 2 threads): ~1.9 megapixels/s for the default widths (32, 64, 128).

It predicts the noise (residual learning, as DnCNN) and returns ``x - noise``. Blind when
``sigma`` is ``None`` (the map is estimated from the image), non-blind otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import noise_map
from .registry import register_model


def _convs(c_in: int, c_out: int, n: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(n):
        layers += [nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class FastUNet(nn.Module):
    """Pixel-unshuffle x2, a 3-scale U-Net of ``widths``, pixel-shuffle back.

    ``blocks`` = convolutions per scale (encoder side; the decoder mirrors the two outer scales).
    """

    scale = 1
    size_multiple = 8
    uses_sigma = True

    def __init__(self, in_channels: int = 1, widths: tuple[int, int, int] = (32, 64, 128),
                 blocks: tuple[int, int, int] = (2, 2, 4)) -> None:
        super().__init__()
        widths, blocks = tuple(widths), tuple(blocks)
        if len(widths) != 3 or len(blocks) != 3 or min(blocks) < 1:
            raise ValueError("widths and blocks need three entries each (blocks >= 1)")
        w1, w2, w3 = widths
        c = in_channels * 4
        self.enc1 = _convs(c + 1, w1, blocks[0])
        self.down1 = nn.Conv2d(w1, w2, 2, stride=2)
        self.enc2 = _convs(w2, w2, blocks[1])
        self.down2 = nn.Conv2d(w2, w3, 2, stride=2)
        self.middle = _convs(w3, w3, blocks[2])
        self.up2 = nn.ConvTranspose2d(w3, w2, 2, stride=2)
        self.dec2 = _convs(w2, w2, blocks[1])
        self.up1 = nn.ConvTranspose2d(w2, w1, 2, stride=2)
        self.dec1 = _convs(w1, w1, max(blocks[0] - 1, 1))
        self.tail = nn.Conv2d(w1, c, 3, padding=1)

    def forward(self, x: torch.Tensor, sigma: float | torch.Tensor | None = None) -> torch.Tensor:
        small = F.pixel_unshuffle(x, 2)
        level = noise_map(x, sigma, small.shape[-2:])
        h1 = self.enc1(torch.cat([small, level], dim=1))
        h2 = self.enc2(self.down1(h1))
        h3 = self.middle(self.down2(h2))
        g2 = self.dec2(self.up2(h3) + h2)
        g1 = self.dec1(self.up1(g2) + h1)
        return x - F.pixel_shuffle(self.tail(g1), 2)

    def initialise_from(self, source: FastUNet) -> None:
        """Start from a trained FastUNet with the same widths and no more ``blocks`` per scale.

        The source's convolutions are copied; each extra one is appended after them and starts as
        the identity (a centred one-tap kernel). It follows a ReLU, so its input is non-negative and
        ReLU(identity(h)) = h: the grown network computes exactly what the source did, and training
        goes on from there with more depth (Net2DeeperNet: T. Chen, I. Goodfellow, J. Shlens,
        ICLR 2016, arXiv:1511.05641).
        """
        theirs = dict(source.named_children())
        for name, module in self.named_children():
            other = theirs[name]
            if not isinstance(module, nn.Sequential):
                module.load_state_dict(other.state_dict())  # shapes differ if widths do: an error
                continue
            convs, old = module[0::2], other[0::2]
            if len(old) > len(convs):
                raise ValueError(f"cannot shrink {name} from {len(old)} to {len(convs)} convolutions")
            for conv, old_conv in zip(convs, old):
                conv.load_state_dict(old_conv.state_dict())
            for conv in list(convs)[len(old):]:
                with torch.no_grad():
                    conv.weight.zero_()
                    conv.bias.zero_()
                    centre = conv.kernel_size[0] // 2
                    conv.weight[:, :, centre, centre] = torch.eye(conv.out_channels,
                                                                  conv.in_channels)


@register_model
def fastunet(**kwargs: object) -> FastUNet:
    """Widths 32/64/128 at 1/2, 1/4, 1/8 resolution (the bundled denoisers use blocks 2/2/8)."""
    return FastUNet(**kwargs)  # type: ignore[arg-type]


@register_model
def fastunet_small(**kwargs: object) -> FastUNet:
    """Widths 24/48/96: ~1.3x faster, for tests and very slow machines."""
    return FastUNet(**{"widths": (24, 48, 96), **kwargs})  # type: ignore[arg-type]
