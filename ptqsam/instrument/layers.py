"""Linear and convolution layers with an input site and a weight site.

Each class subclasses the torch layer and only replaces ``forward``; :func:`ptqsam.instrument.instrument`
swaps an instance's class, so parameters and state_dict keys stay those of the torch layer and the
stored float weight is never modified (the weight site returns a new tensor when quantizing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ptqsam.errors import RecipeError
from ptqsam.instrument.sites import Site
from ptqsam.instrument.units import Product


class LayerSites:
    """Sites of a layer: its input and its weight."""

    SITE_ROLES = {"input": "input", "weight": "weight"}
    input_site: Site
    weight_site: Site

    def site_weight(self) -> torch.Tensor:
        """The weight as its site sees it (output channels on axis 0)."""
        return self.weight


class SitedLinear(LayerSites, nn.Linear):
    """``nn.Linear`` whose input and weight pass through ``input_site`` and ``weight_site``."""

    PRODUCTS = (Product("linear", "input", "weight"),)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.linear(self.input_site(input), self.weight_site(self.site_weight()), self.bias)


class SitedConv2d(LayerSites, nn.Conv2d):
    """``nn.Conv2d`` whose input and weight pass through ``input_site`` and ``weight_site``."""

    PRODUCTS = (Product("conv2d", "input", "weight"),)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.input_site(input), self.weight_site(self.site_weight()), self.bias)


class SitedConvTranspose2d(LayerSites, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose input and weight pass through ``input_site`` and ``weight_site``.

    The weight is stored ``(in, out / groups, kH, kW)``; the weight site sees it transposed to
    ``(out / groups, in, kH, kW)`` so that, as for every other weight site, output channels are on
    axis 0. Transposing twice restores the original strides, so the float path is unchanged.
    """

    PRODUCTS = (Product("conv_transpose2d", "input", "weight"),)

    def site_weight(self) -> torch.Tensor:
        return self.weight.transpose(0, 1)

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        # Same steps as torch's ConvTranspose2d.forward, with the two sites.
        if self.padding_mode != "zeros":
            raise RecipeError("only 'zeros' padding mode is supported for ConvTranspose2d")
        num_spatial_dims = 2
        output_padding = self._output_padding(
            input, output_size, self.stride, self.padding, self.kernel_size, num_spatial_dims, self.dilation
        )
        weight = self.weight_site(self.site_weight()).transpose(0, 1)
        return F.conv_transpose2d(
            self.input_site(input), weight, self.bias, self.stride, self.padding, output_padding,
            self.groups, self.dilation,
        )


#: torch layer class -> instrumented class.
SITED_LAYERS: dict[type[nn.Module], type[nn.Module]] = {
    nn.Linear: SitedLinear,
    nn.Conv2d: SitedConv2d,
    nn.ConvTranspose2d: SitedConvTranspose2d,
}
