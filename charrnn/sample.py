"""Generation (each sampled character fed back in) and scoring."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from charrnn.model import CharRNN
from charrnn.vocab import Vocab


def pick(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> int:
    """One id from logits (V,): argmax at temperature 0, else a draw from softmax(logits / temperature)."""
    if temperature == 0:
        return int(logits.argmax())
    logp = torch.log_softmax(logits.double() / temperature, dim=-1)  # max subtracted inside: no overflow
    return int(torch.multinomial(logp.exp(), 1, generator=gen))


@torch.no_grad()
def generate(model: CharRNN, vocab: Vocab, prime: str, length: int, temperature: float, seed: int,
             device: torch.device) -> Iterator[str]:
    """Yield length characters continuing prime (characters outside the vocab are skipped).

    With no usable prime the model starts as if after a newline (or a random character)."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    known = [c for c in prime if c in vocab]
    if not known:
        start = vocab.index.get("\n")
        known = [vocab.chars[start if start is not None else int(torch.randint(len(vocab), (1,), generator=gen))]]
    x = torch.from_numpy(vocab.encode("".join(known)).astype("int64"))[None].to(device)  # (1, P)
    logits, state = model(x)  # (1, P, V): the state is warmed up on the whole prime
    for _ in range(length):
        i = pick(logits[0, -1].float().cpu(), temperature, gen)
        yield vocab.chars[i]
        logits, state = model(torch.tensor([[i]], device=device), state)  # (1, 1, V)
