"""The fast sampling step: one character through every layer of a CharRNN, for sample.py.

Calling nn.LSTM/GRU/RNN once per character costs far more in per-call overhead than the work itself, which at
batch 1 is one matrix-vector product per weight matrix. FusedStep computes exactly the same function with:
- the first layer's input projection folded into a (V, G) table, embedding @ W_ih^T + biases: one row a character;
- each further LSTM/RNN layer's input and hidden weights stacked, pre-transposed, so one addmm gives its gates
  (GRU keeps the two products apart: its candidate multiplies the hidden part by the reset gate);
- LSTM gate columns reordered i, f, o, g, so one sigmoid covers three gates;
- every intermediate in a buffer made once (out=, in-place ops): a step allocates nothing.
G is the gate width of a layer: LSTM 4H, GRU 3H, RNN H. B is the number of samples still being drawn.
"""

from __future__ import annotations

import torch

from charrnn.model import CharRNN, State

GATES = {"lstm": 4, "gru": 3, "rnn": 1}


class FusedStep:
    """Holds the state of B samples; step(ids) feeds each its next character and returns logits (B, V)."""

    def __init__(self, model: CharRNN, state: State):
        cfg, p = model.cfg, dict(model.named_parameters())
        self.cell, self.layers, H = cfg.cell, cfg.num_layers, cfg.hidden_size
        order = torch.arange(GATES[self.cell] * H)
        if self.cell == "lstm":  # i, f, g, o -> i, f, o, g
            order = torch.cat([order[: 2 * H], order[3 * H :], order[2 * H : 3 * H]])
        with torch.no_grad():
            w = {k[4:]: v.detach()[order] for k, v in p.items() if k.startswith("rnn.")}  # gate rows reordered
            gru = self.cell == "gru"
            first_bias = w["bias_ih_l0"] + (0 if gru else w["bias_hh_l0"])  # GRU adds b_hh inside its candidate
            self.table = (p["embed.weight"] @ w["weight_ih_l0"].T + first_bias).contiguous()  # (V, G)
            self.w_hh = [w[f"weight_hh_l{i}"].T.contiguous() for i in range(self.layers)]  # each (H, G)
            self.b_hh = [w[f"bias_hh_l{i}"] for i in range(self.layers)]  # each (G,)
            deeper = range(1, self.layers)
            if gru:  # layers >= 1: input and hidden products apart
                self.w_ih = [None] + [w[f"weight_ih_l{i}"].T.contiguous() for i in deeper]  # (H, G)
                self.b_ih = [None] + [w[f"bias_ih_l{i}"] for i in deeper]  # (G,)
            else:  # layers >= 1: one product of [input | state] with the stacked weights
                self.w_cat = [None] + [torch.cat([w[f"weight_ih_l{i}"], w[f"weight_hh_l{i}"]], 1).T.contiguous()
                                       for i in deeper]  # (2H, G)
                self.b_cat = [None] + [w[f"bias_ih_l{i}"] + w[f"bias_hh_l{i}"] for i in deeper]  # (G,)
            self.w_out, self.b_out = p["head.weight"].detach().T.contiguous(), p["head.bias"].detach()  # (H, V), (V,)
        self.H = H
        self.allocate(state)

    def allocate(self, state: State) -> None:
        """Buffers for B = state[0].shape[1] rows, and views into them made once (a view costs a few
        microseconds, as much as the arithmetic on it); the state is copied in."""
        h = state[0]  # (layers, B, H)
        B, H, G = h.shape[1], self.H, GATES[self.cell] * self.H
        new = dict(dtype=h.dtype, device=h.device)
        # z (B, layers H) holds every layer's state h side by side: layer i >= 1 reads its input (layer i-1's h,
        # already new) and its own h (still old) as one view z[:, (i-1)H : (i+1)H], so nothing is copied
        self.z = h.transpose(0, 1).reshape(B, self.layers * H).clone()
        self.h = [self.z[:, i * H : (i + 1) * H] for i in range(self.layers)]  # each (B, H)
        self.xh = [None] + [self.z[:, (i - 1) * H : (i + 1) * H] for i in range(1, self.layers)]  # each (B, 2H)
        self.c = list(state[1].clone()) if self.cell == "lstm" else None  # each (B, H)
        self.gates = torch.empty(B, G, **new)  # (B, G): LSTM i f o g | GRU r z n (input side) | RNN
        g = self.gates
        self.sig, self.tanh = (g[:, : 3 * H], g[:, 3 * H :]) if self.cell == "lstm" else (g[:, : 2 * H], g[:, 2 * H :])
        self.i, self.f, self.o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H]  # LSTM; GRU: i = r, f = z
        self.hidden = torch.empty(B, G, **new)  # (B, G): GRU's W_hh h + b_hh
        self.hidden_rz, self.hidden_n = self.hidden[:, : 2 * H], self.hidden[:, 2 * H :]
        self.tmp = torch.empty(B, H, **new)  # (B, H)
        self.logits = torch.empty(B, self.w_out.shape[1], **new)  # (B, V)

    def state(self) -> State:
        h = torch.stack(self.h)  # (layers, B, H)
        return (h, torch.stack(self.c)) if self.cell == "lstm" else (h,)

    def keep(self, rows: torch.Tensor) -> None:
        """Go on with these rows (B',) only: samples that ended leave the batch."""
        self.allocate(tuple(s.index_select(1, rows) for s in self.state()))

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> logits (B, V) of the next character; the state moves on by one character. No tensor here
        requires grad, so no grad mode needs entering (that costs as much as an op, every character)."""
        torch.index_select(self.table, 0, ids, out=self.gates)  # (B, G): layer 0's input projection and biases
        for i in range(self.layers):
            if self.cell == "gru":
                self.gru(i)
            else:
                if i == 0:
                    self.gates.addmm_(self.h[0], self.w_hh[0])
                else:
                    torch.addmm(self.b_cat[i], self.xh[i], self.w_cat[i], out=self.gates)
                self.lstm(i) if self.cell == "lstm" else torch.tanh(self.gates, out=self.h[i])
        return torch.addmm(self.b_out, self.h[-1], self.w_out, out=self.logits)

    def lstm(self, i: int) -> None:
        self.sig.sigmoid_()
        self.tanh.tanh_()  # g
        c = self.c[i]  # (B, H)
        c.mul_(self.f).addcmul_(self.i, self.tanh)  # c = f c + i g
        torch.mul(torch.tanh(c, out=self.tmp), self.o, out=self.h[i])  # h = o tanh(c)

    def gru(self, i: int) -> None:
        h, r, z = self.h[i], self.i, self.f
        if i > 0:
            torch.addmm(self.b_ih[i], self.h[i - 1], self.w_ih[i], out=self.gates)  # (B, 3H): layer i-1's new h
        torch.addmm(self.b_hh[i], h, self.w_hh[i], out=self.hidden)  # (B, 3H)
        self.sig.add_(self.hidden_rz).sigmoid_()  # r, z
        self.tanh.addcmul_(r, self.hidden_n).tanh_()  # n = tanh(W_in x + b_in + r (W_hn h + b_hn))
        torch.lerp(self.tanh, h, z, out=h)  # h = n + z (h - n): one op for three


def supported(model: CharRNN) -> bool:
    """Models the fused step computes exactly: the three cells with tanh, float32 weights (any device)."""
    rnn = model.rnn
    return getattr(rnn, "nonlinearity", "tanh") == "tanh" and rnn.bias and not rnn.bidirectional and all(
        p.dtype == torch.float32 for p in model.parameters())
