"""The one training loop, optimiser and schedule, dead-latent tracking, checkpoints."""
