"""retina-sr: real-time super-resolution, deblurring and denoising of retinal fundus photographs."""

__version__ = "0.1.0"
