"""Using a model to write: N samples as one batch, each character fed back in (sample.py); items of a list told
new from copies (items.py); a model kept loaded behind an HTTP API and a page (serve.py and its modules)."""
