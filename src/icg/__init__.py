"""ICG: personalized cover image generation."""

__version__ = "0.1.0"
