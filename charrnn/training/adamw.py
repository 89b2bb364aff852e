"""AdamW: torch.optim.AdamW's update (its per-tensor path, the one it takes on the CPU), in plain tensor ops.

torch.optim's optimizers import torch._dynamo at their first step: 1.7 s on a 2-core CPU, nearly as long as
importing torch itself, before a run's first step. This one gives the same numbers bit for bit (a test checks
it against torch.optim.AdamW) and keeps the same state per parameter, so checkpoints load into either:
step (a 0-d float32 tensor on the CPU), exp_avg and exp_avg_sq (the parameter's shape).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class AdamW:
    """Adam with decoupled weight decay over one group of parameters; set param_groups[0]["lr"] to schedule."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.params = list(params)
        self.param_groups = [{"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                              "params": self.params}]
        self.state: dict[int, dict[str, torch.Tensor]] = {}  # parameter index -> step, exp_avg, exp_avg_sq

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient, in torch.optim.AdamW's order of operations."""
        group = self.param_groups[0]
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            s = self.state.get(i)
            if s is None:
                s = self.state[i] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                     "exp_avg_sq": torch.zeros_like(p)}
            s["step"] += 1
            p.mul_(1 - lr * wd)
            s["exp_avg"].lerp_(p.grad, 1 - beta1)
            s["exp_avg_sq"].mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            step = s["step"].item()
            step_size = lr / (1 - beta1**step)
            denom = (s["exp_avg_sq"].sqrt() / (1 - beta2**step) ** 0.5).add_(eps)
            p.addcdiv_(s["exp_avg"], denom, value=-step_size)

    def state_dict(self) -> dict:
        """{"state": {index: {name: tensor}}, "param_groups": [settings, params as indices]}, as torch's."""
        group = {k: v for k, v in self.param_groups[0].items() if k != "params"}
        return {"state": {i: dict(s) for i, s in self.state.items()},
                "param_groups": [{**group, "params": list(range(len(self.params)))}]}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take the moments (copied to each parameter's device and dtype) and step counts; settings stay."""
        self.state = {}
        for i, s in state_dict["state"].items():
            p = self.params[int(i)]
            self.state[int(i)] = {"step": s["step"].detach().to("cpu", torch.float32).clone(),
                                  **{k: s[k].detach().to(p.device, p.dtype).clone() for k in ("exp_avg", "exp_avg_sq")}}
