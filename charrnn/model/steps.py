"""One character at a time through every layer of a CharRNN: the steps that sampling and the unit recorder use.

Both steps hold the state of B rows and share one interface: step(ids (B,)) -> logits (B, V) of the next
character, keep(rows) to go on with some rows only, state() and allocate(state) to read or replace every row's
state, and now() for row 0's state. ModelStep calls the model's own modules (the reference); FusedStep computes
exactly the same function faster.

Calling nn.LSTM/GRU/RNN once per character costs far more in per-call overhead than the work itself, which at
batch 1 is one matrix-vector product per weight matrix. FusedStep computes it with:
- the first layer's input projection folded into a (V, G) table, embedding @ W_ih^T + biases: one row a character;
- each further layer's input and hidden weights stacked, pre-transposed, so one addmm gives its gates (unless the
  cell keeps the hidden product apart: a GRU's candidate multiplies it by the reset gate);
- gate blocks reordered so the sigmoid gates come first and one sigmoid covers them (rnn.CELLS says how);
- every intermediate in a buffer made once (out=, in-place ops): an fp32 step allocates nothing;
- with bf16 weights (cast once, here, and packed in oneDNN's blocked layout on the CPU), each product's input is
  cast into a bf16 buffer and the product added to its fp32 gates: the state and the gates' arithmetic stay
  fp32. On CPUs with native bf16 that pays from 32 rows on (device.BF16_ROWS), and at one row for models whose
  recurrent matrices are large (device.BF16_BYTES); below 32 rows the output layer's small product stays fp32.
G is the gate width of a layer (gates H: LSTM 4H, GRU 3H, RNN H). B is the number of rows still being stepped.
A cell type's own arithmetic is the FusedStep method named after it (lstm, gru, rnn).
"""

from __future__ import annotations

import functools

import torch

from charrnn.device import BF16_ROWS, autocast
from charrnn.model.rnn import CharRNN, State


class ModelStep:
    """The straightforward step: the model's own modules, one character at a time (the reference that FusedStep
    must match)."""

    def __init__(self, model: CharRNN, state: State, precision: str = "fp32"):
        self.model, self.rows, self.precision = model, state, precision

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> logits (B, V) of the next character."""
        with torch.no_grad(), autocast(ids.device, self.precision):
            logits, self.rows = self.model(ids[:, None], self.rows)  # (B, 1, V)
        return logits[:, -1].float()

    def keep(self, rows: torch.Tensor) -> None:
        self.rows = tuple(s.index_select(1, rows) for s in self.rows)  # each (layers, B', H)

    def state(self) -> State:
        return self.rows

    def allocate(self, state: State) -> None:
        """The rows replaced by state's (each (layers, B, H))."""
        self.rows = state

    def now(self) -> State:
        """Row 0's state: one (layers, H) view per state tensor (hidden, then cell); copy before stepping."""
        return tuple(s[:, 0] for s in self.rows)


class FusedStep:
    """Holds the state of B rows; step(ids) feeds each its next character and returns logits (B, V)."""

    def __init__(self, model: CharRNN, state: State, weights: torch.dtype = torch.float32):
        cfg, p, kind = model.cfg, dict(model.named_parameters()), model.kind
        self.kind, self.layers, H = kind, cfg.num_layers, cfg.hidden_size
        self.math = getattr(self, cfg.cell)  # the cell's arithmetic on one layer
        order = torch.cat([torch.arange(b * H, (b + 1) * H) for b in kind.fused_order])  # (G,) gate rows
        with torch.no_grad():
            w = {k[4:]: v.detach()[order] for k, v in p.items() if k.startswith("rnn.")}  # gate rows reordered
            first_bias = w["bias_ih_l0"] + (0 if kind.hidden_apart else w["bias_hh_l0"])  # else added apart
            self.table = (p["embed.weight"] @ w["weight_ih_l0"].T + first_bias).contiguous()  # (V, G)
            self.w_hh = [w[f"weight_hh_l{i}"].T.contiguous() for i in range(self.layers)]  # each (H, G)
            self.b_hh = [w[f"bias_hh_l{i}"] for i in range(self.layers)]  # each (G,)
            deeper = range(1, self.layers)
            if kind.hidden_apart:  # layers >= 1: input and hidden products apart
                self.w_ih = [None] + [w[f"weight_ih_l{i}"].T.contiguous() for i in deeper]  # (H, G)
                self.b_ih = [None] + [w[f"bias_ih_l{i}"] for i in deeper]  # (G,)
            else:  # layers >= 1: one product of [input | state] with the stacked weights
                self.w_cat = [None] + [torch.cat([w[f"weight_ih_l{i}"], w[f"weight_hh_l{i}"]], 1).T.contiguous()
                                       for i in deeper]  # (2H, G)
                self.b_cat = [None] + [w[f"bias_ih_l{i}"] + w[f"bias_hh_l{i}"] for i in deeper]  # (G,)
            self.w_out, self.b_out = p["head.weight"].detach().T.contiguous(), p["head.bias"].detach()  # (H, V), (V,)
            if weights != torch.float32:  # the recurrent matrices: biases and the table stay fp32
                rows = state[0].shape[1]
                for name in ("w_hh", "w_ih", "w_cat"):
                    setattr(self, name, [m if m is None else to_weights(m, weights, rows)
                                         for m in getattr(self, name, [])])
            self.heads = {torch.float32: self.w_out}  # the output layer's matrix per dtype, made when first used
        self.H, self.weights = H, weights
        self.addmm = self.head_addmm = torch.addmm if weights == torch.float32 else self.cast_addmm
        self.allocate(state)

    def allocate(self, state: State) -> None:
        """Buffers for B = state[0].shape[1] rows, and views into them made once (a view costs a few
        microseconds, as much as the arithmetic on it); the state is copied in."""
        h = state[0]  # (layers, B, H)
        B, H, G = h.shape[1], self.H, self.kind.gates * self.H
        new = dict(dtype=h.dtype, device=h.device)
        # z (B, layers H) holds every layer's state h side by side: layer i >= 1 reads its input (layer i-1's h,
        # already new) and its own h (still old) as one view z[:, (i-1)H : (i+1)H], so nothing is copied
        self.z = h.transpose(0, 1).reshape(B, self.layers * H).clone()
        self.h = [self.z[:, i * H : (i + 1) * H] for i in range(self.layers)]  # each (B, H)
        self.xh = [None] + [self.z[:, (i - 1) * H : (i + 1) * H] for i in range(1, self.layers)]  # each (B, 2H)
        self.c = list(state[1].clone()) if len(state) > 1 else None  # each (B, H): an LSTM's cell state
        self.gates = torch.empty(B, G, **new)  # (B, G): LSTM i f o g | GRU r z n (input side) | RNN
        g, s = self.gates, self.kind.sigmoid_gates * H
        self.sig, self.tanh = g[:, :s], g[:, s:]
        self.i, self.f, self.o = g[:, :H], g[:, H : 2 * H], g[:, 2 * H : 3 * H]  # LSTM; GRU: i = r, f = z
        self.hidden = torch.empty(B, G, **new)  # (B, G): a hidden product kept apart (GRU's W_hh h + b_hh)
        self.hidden_rz, self.hidden_n = self.hidden[:, : 2 * H], self.hidden[:, 2 * H :]
        self.tmp = torch.empty(B, H, **new)  # (B, H)
        self.logits = torch.empty(B, self.w_out.shape[1], **new)  # (B, V)
        if self.weights != torch.float32:
            # the output layer's small product is faster in fp32 below BF16_ROWS rows on a CPU (a server's rows
            # come and go: chosen again at every allocation)
            head = self.weights if B >= BF16_ROWS or h.device.type != "cpu" else torch.float32
            if head not in self.heads:
                self.heads[head] = to_weights(self.heads[torch.float32], head, B)
            self.w_out = self.heads[head]
            self.head_addmm = torch.addmm if head == torch.float32 else self.cast_addmm
            cast = dict(dtype=self.weights, device=h.device)
            self.cast_in = {n: torch.empty(B, n, **cast) for n in (H, 2 * H)}  # a product's input, cast
            self.cast_out = {}  # an unpacked product's result, per width (made when first used)

    def cast_addmm(self, bias: torch.Tensor, x: torch.Tensor, w: torch.Tensor | Packed, out: torch.Tensor
                   ) -> torch.Tensor:
        """torch.addmm(bias, x, w, out=out) with w in bf16: x cast, the product made in bf16 and added in fp32."""
        xb = self.cast_in[x.shape[1]].copy_(x)  # (B, K)
        if isinstance(w, Packed):
            return torch.add(bias, LINEAR(xb, w.weight, None, "none", [], ""), out=out)  # (B, N)
        n = w.shape[1]
        if n not in self.cast_out:
            self.cast_out[n] = torch.empty(x.shape[0], n, dtype=w.dtype, device=x.device)  # (B, N)
        return torch.add(bias, torch.mm(xb, w, out=self.cast_out[n]), out=out)

    def state(self) -> State:
        h = torch.stack(self.h)  # (layers, B, H)
        return (h, torch.stack(self.c)) if self.c is not None else (h,)

    def now(self) -> State:
        """Row 0's state: one (layers, H) tensor per state tensor (hidden, then cell); copy before stepping."""
        h = self.z[0].view(self.layers, self.H)  # (layers, H), a view
        return (h, torch.stack([c[0] for c in self.c])) if self.c is not None else (h,)

    def keep(self, rows: torch.Tensor) -> None:
        """Go on with these rows (B',) only: samples that ended leave the batch."""
        self.allocate(tuple(s.index_select(1, rows) for s in self.state()))

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> logits (B, V) of the next character; the state moves on by one character. No tensor here
        requires grad, so no grad mode needs entering (that costs as much as an op, every character)."""
        torch.index_select(self.table, 0, ids, out=self.gates)  # (B, G): layer 0's input projection and biases
        for i in range(self.layers):
            if not self.kind.hidden_apart:
                if i == 0:
                    self.addmm(self.gates, self.h[0], self.w_hh[0], out=self.gates)
                else:
                    self.addmm(self.b_cat[i], self.xh[i], self.w_cat[i], out=self.gates)
            self.math(i)
        return self.head_addmm(self.b_out, self.h[-1], self.w_out, out=self.logits)

    def lstm(self, i: int) -> None:
        self.sig.sigmoid_()
        self.tanh.tanh_()  # g
        c = self.c[i]  # (B, H)
        c.mul_(self.f).addcmul_(self.i, self.tanh)  # c = f c + i g
        torch.mul(torch.tanh(c, out=self.tmp), self.o, out=self.h[i])  # h = o tanh(c)

    def gru(self, i: int) -> None:
        h, r, z = self.h[i], self.i, self.f
        if i > 0:
            self.addmm(self.b_ih[i], self.h[i - 1], self.w_ih[i], out=self.gates)  # (B, 3H): layer i-1's new h
        self.addmm(self.b_hh[i], h, self.w_hh[i], out=self.hidden)  # (B, 3H)
        self.sig.add_(self.hidden_rz).sigmoid_()  # r, z
        self.tanh.addcmul_(r, self.hidden_n).tanh_()  # n = tanh(W_in x + b_in + r (W_hn h + b_hn))
        torch.lerp(self.tanh, h, z, out=h)  # h = n + z (h - n): one op for three

    def rnn(self, i: int) -> None:
        torch.tanh(self.gates, out=self.h[i])  # h = tanh(W_ih x + b_ih + W_hh h + b_hh)


class Packed:
    """A bf16 matrix (K, N) as oneDNN's linear wants it on the CPU: reordered once into its blocked layout (a
    1024 x 2048 product at one row: 70 us, against 191 through torch.mm in bf16 and 149 in fp32)."""

    dtype = torch.bfloat16

    def __init__(self, m: torch.Tensor, rows: int):
        self.shape = m.shape  # (K, N)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(m.T.contiguous(), rows)  # (N, K) blocked


try:
    LINEAR = torch.ops.mkldnn._linear_pointwise  # (x (B, K), packed (N, K), bias, "none", [], "") -> (B, N)
except (AttributeError, RuntimeError):  # a torch built without oneDNN
    LINEAR = None


def packs() -> bool:
    """Whether oneDNN packs bf16 matrices here (checked once: packing_works)."""
    return LINEAR is not None and packing_works()


@functools.cache
def packing_works() -> bool:
    """A torch built with oneDNN, on a CPU its bf16 reorder takes (avx512bw/vl/dq or avx_ne_convert: not AVX2-only
    CPUs, where bf16 is emulated anyway), whose private packed-linear ops still behave as this module expects: a
    small product through them equals torch.mm's."""
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
        m = torch.arange(6.0).reshape(2, 3).bfloat16()  # (K, N)
        x = torch.tensor([[1.0, 2.0]], dtype=torch.bfloat16)  # (1, K)
        return torch.equal(LINEAR(x, Packed(m, 1).weight, None, "none", [], ""), torch.mm(x, m))
    except (AttributeError, RuntimeError, TypeError):
        return False


def to_weights(m: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor | Packed:
    """A pre-transposed fp32 matrix (K, N) in dtype: packed for oneDNN on the CPU where it can be, else as it is."""
    m = m.to(dtype)
    return Packed(m, rows) if dtype == torch.bfloat16 and m.device.type == "cpu" and packs() else m


def supported(model: CharRNN) -> bool:
    """Models the fused step computes exactly: every cell type with tanh, float32 weights (any device)."""
    rnn = model.rnn
    return getattr(rnn, "nonlinearity", "tanh") == "tanh" and rnn.bias and not rnn.bidirectional and all(
        p.dtype == torch.float32 for p in model.parameters())


def step_for(model: CharRNN, state: State, fast: bool = True, precision: str = "fp32") -> FusedStep | ModelStep:
    """The fused step (bf16 precision: with bf16 weights) when fast and the model allows it; else the model's own
    modules (bf16: under autocast, which casts every weight at every character)."""
    if fast and supported(model):
        return FusedStep(model, state, torch.bfloat16 if precision == "bf16" else torch.float32)
    return ModelStep(model, state, precision)
