"""Making a model: the Trainer (the truncated-BPTT loop), AdamW, run directories, the `train` session, and
torchrun as a mode built on that session."""
