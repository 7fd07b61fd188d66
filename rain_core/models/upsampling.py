"""Nearest ×2 upsampling followed by a 3×3 convolution, computed as one stride-2 transposed convolution.

After a nearest ×2 upsample, the 3×3 window of an output pixel covers only 2×2 distinct input pixels: along each
axis, an even output row sees input rows (i − 1, i) with weights (w0, w1 + w2), an odd one (i, i + 1) with
(w0 + w1, w2). That is a transposed convolution with stride 2, padding 1 and the 4-tap kernel
(w2, w1 + w2, w0 + w1, w0) per axis, run on the small input: 16 multiply-adds per input pixel instead of 36 per
4 output pixels (×0.44), and no upsampled tensor in memory. Same function up to float rounding (weights are summed
before they multiply); the parameters stay the 3×3 `conv` of diffusers' Upsample2D, so checkpoints and gradients
are unchanged. Anything else Upsample2D supports (a norm, a transposed conv of its own, an output size that is not
twice the input) runs diffusers' code.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.upsampling import Upsample2D


def _fold_axis(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """The 3 taps along `dim` → the 4 taps of the stride-2 transposed conv: (w2, w1 + w2, w0 + w1, w0)."""
    w0, w1, w2 = weight.unbind(dim)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim=dim)


def fold_nearest_upsample_kernel(weight: torch.Tensor) -> torch.Tensor:
    """(out, in, 3, 3) kernel of the conv after a nearest ×2 upsample → (in, out, 4, 4) stride-2 transposed-conv kernel."""
    return _fold_axis(_fold_axis(weight, -2), -1).transpose(0, 1)


class FoldedUpsample2D(Upsample2D):
    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        conv = getattr(self, "conv", None)
        doubled = output_size is None or tuple(output_size) == tuple(2 * s for s in hidden_states.shape[-2:])
        if not (
            self.use_conv
            and not self.use_conv_transpose
            and self.interpolate
            and self.norm is None
            and doubled
            and isinstance(conv, torch.nn.Conv2d)
            and conv.kernel_size == (3, 3)
            and conv.padding == (1, 1)
            and conv.stride == (1, 1)
            and conv.dilation == (1, 1)
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and hidden_states.dim() == 4
        ):
            return super().forward(hidden_states, output_size, *args, **kwargs)
        kernel = fold_nearest_upsample_kernel(conv.weight)
        return F.conv_transpose2d(hidden_states, kernel, conv.bias, stride=2, padding=1)
