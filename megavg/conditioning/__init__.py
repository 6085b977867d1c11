"""What the Wan DiT is conditioned on, defined once below the packages that build it (``data``'s latent
collate, ``infer``'s sampler and text encoder, the planner): :mod:`megavg.conditioning.text`."""
