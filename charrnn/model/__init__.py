"""The network and its files: CharRNN and the registry of cell types, the one-character steps, evaluation over
streams, and the only code that reads or writes model files."""
