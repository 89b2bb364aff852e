"""Using a model to write: N samples as one batch, each character fed back in."""
