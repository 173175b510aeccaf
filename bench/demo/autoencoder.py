"""An exact pixel <-> "latent" autoencoder, the VAE stand-in of the demo world's pixel-space models.

The demo teacher denoises 1-channel 8x8 images in [-1, 1] directly, but the project (and diffusers'
``StableDiffusionPipeline``) expect a ``vae`` with ``decode(z / scaling_factor)``. ``PixelAutoencoder``
is that component with no computation to speak of:

* ``decode(z)`` repeats the single channel to RGB: ``DecoderOutput(sample=(N, 3, H, W) in [-1, 1])``;
* ``encode(x)`` averages the RGB channels: ``AutoencoderKLOutput(latent_dist=...)`` whose ``latent_dist``
  is a point mass (``mode()``, ``sample()`` and ``mean`` all give the same (N, 1, H, W) tensor), so code
  written for ``AutoencoderKL`` (``vae.encode(x).latent_dist.sample()``) runs unchanged.

``decode(encode(x))`` is exact for gray images and ``encode(decode(z)) == z`` always. The config carries
``block_out_channels=[1]`` so that diffusers computes ``vae_scale_factor = 1``. The module has one
persistent buffer (``anchor``, a single 1.0 that no computation uses) so that ``save_pretrained`` writes
a weights file, ``from_pretrained`` finds one, and ``.dtype`` / ``.device`` work as for any model.
"""

import torch
from diffusers import ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import DecoderOutput
from diffusers.models.modeling_outputs import AutoencoderKLOutput


class PointDistribution:
    """The ``latent_dist`` of an exact encoder: every statistic is the latent itself."""

    def __init__(self, latent: torch.Tensor):
        self.mean = latent

    def mode(self) -> torch.Tensor:
        return self.mean

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.mean


class PixelAutoencoder(ModelMixin, ConfigMixin):
    config_name = "config.json"

    @register_to_config
    def __init__(self, latent_channels: int = 1, image_channels: int = 3, scaling_factor: float = 1.0,
                 block_out_channels: tuple[int, ...] = (1,)):
        super().__init__()
        if latent_channels != 1:
            raise ValueError(f"PixelAutoencoder: latent_channels must be 1 (a gray image), got {latent_channels}")
        self.register_buffer("anchor", torch.ones(1))

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        """RGB images (N, C, H, W) in [-1, 1] -> their channel mean as the (N, 1, H, W) latent.

        Gray pixels (all channels equal) keep their value bit for bit; a float mean of three equal values
        can be off by one ulp.
        """
        gray = x[:, :1]
        is_gray = (x == gray).all(dim=1, keepdim=True)
        latent_dist = PointDistribution(torch.where(is_gray, gray, x.mean(dim=1, keepdim=True)))
        return AutoencoderKLOutput(latent_dist=latent_dist) if return_dict else (latent_dist,)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator: torch.Generator | None = None):
        """(N, 1, H, W) latents -> (N, image_channels, H, W) images: the channel repeated, values unchanged."""
        sample = z.repeat(1, self.config.image_channels, 1, 1)
        return DecoderOutput(sample=sample) if return_dict else (sample,)

    def forward(self, x: torch.Tensor, return_dict: bool = True):
        sample = self.decode(self.encode(x).latent_dist.mode()).sample
        return DecoderOutput(sample=sample) if return_dict else (sample,)
