"""Looking into a model: scores, single units and their signals, checkpoint descriptions, loss curves."""
