"""Membership audits of diffusion models: were these artworks in the model's training data?"""
__version__ = "0.1.0"
