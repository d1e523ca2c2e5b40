"""One training step of the reference model under a precision recipe (needs torch): the
optimizer, fp32 master weights and gradient accumulation, the fp16 loss scale."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from simtrain.spec.model import ModelSpec
from simtrain.spec.precision import PRECISIONS
from simtrain.spec.scenario import TrainingSpec
from simtrain.torchref.precision import (
    AUTOCAST_DTYPE,
    FP16_LOSS_SCALE,
    FP32_GRAD_ACCUMULATION,
    MASTER_WEIGHTS,
)
from simtrain.torchref.reference_model import ReferenceGPT, build_reference_model

#: Reference parameter names Megatron-Core's Muon leaves to its scalar Adam besides the vectors:
#: the word embeddings and the output layer, and the PEFT prompt and prefix tables
#: (costs.params.NOT_MUON; ReferenceGPT's ``wte``, ``lm_head``, ``prompt``,
#: ``blocks.N.attn.prefix_k`` / ``prefix_v``; its learned positions ``wpe`` are a matrix).
_NOT_MUON_PREFIXES = ("wte.", "lm_head.", "prompt")
_NOT_MUON_PARTS = ("prefix_",)


class _MuonWithAdam(torch.optim.Optimizer):
    """Muon on the matrices and AdamW on the rest (Megatron-Core's split: costs.muon):
    ``torch.optim.Muon`` (PyTorch >= 2.9: one ``momentum_buffer`` per matrix, 5 Newton-Schulz
    steps) beside ``torch.optim.AdamW``, stepped together."""

    def __init__(self, matrices: list[torch.Tensor], rest: list[torch.Tensor], lr: float) -> None:
        self.parts = [torch.optim.Muon(matrices, lr=lr)] if matrices else []
        if rest:
            self.parts.append(make_optimizer("adamw", rest))
        super().__init__([*matrices, *rest], {"lr": lr})
        self.state = _ChainedState(self.parts)

    def step(self, closure=None):  # noqa: ANN001, ANN201 (torch's signature)
        for part in self.parts:
            part.step()


class _ChainedState(Mapping):
    """The parts' ``state`` dicts read as one mapping (``_Trainer.state_tensors``). Not a
    ``collections.ChainMap``: torch keeps each optimizer's state in a ``defaultdict``, so a
    ChainMap's lookup of the second part's key would create an empty entry in the first and
    return it."""

    def __init__(self, parts: list[torch.optim.Optimizer]) -> None:
        self.parts = parts

    def _merged(self) -> dict:
        return {k: v for part in self.parts for k, v in part.state.items()}

    def __getitem__(self, key):  # noqa: ANN001, ANN204
        return self._merged()[key]

    def __iter__(self):  # noqa: ANN204
        return iter(self._merged())

    def __len__(self) -> int:
        return sum(len(part.state) for part in self.parts)


def make_optimizer(name: str, params: list[torch.Tensor],
                   names: list[str] | None = None) -> torch.optim.Optimizer:  # fmt: skip
    """torch.optim optimizers with ``foreach=False`` (no multi-tensor temporaries). Muon needs
    the parameters' ``names`` (the embeddings and the output layer go to AdamW)."""
    lr = 1e-4
    if name == "muon":
        if names is None or len(names) != len(params):
            raise ValueError("muon needs every parameter's name (the embeddings and the "
                             "output layer go to AdamW)")  # fmt: skip
        mats = [p for p, n in zip(params, names, strict=True)
                if p.ndim == 2 and not n.startswith(_NOT_MUON_PREFIXES)
                and not any(x in n for x in _NOT_MUON_PARTS)]  # fmt: skip
        ids = {id(p) for p in mats}
        return _MuonWithAdam(mats, [p for p in params if id(p) not in ids], lr)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.0, foreach=False)
    if name == "sgd_momentum":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, foreach=False)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, foreach=False)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=0.01, foreach=False)
    if name == "adafactor":
        return torch.optim.Adafactor(params, lr=1e-2, foreach=False)
    if name == "adam8bit":
        raise NotImplementedError("the reference trainer has no bitsandbytes path for adam8bit")
    raise ValueError(f"unknown optimizer {name!r}")


class _Trainer:
    """One training step under the precision recipe of ``training.precision``."""

    def __init__(self, model: ReferenceGPT, training: TrainingSpec, device: torch.device) -> None:
        self.model, self.device = model, device
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for _, p in named]
        self.autocast = AUTOCAST_DTYPE.get(training.precision)
        fp16 = PRECISIONS[training.precision].compute_dtype == "fp16"
        self.scale = FP16_LOSS_SCALE if fp16 else 1.0
        self.masters: list[torch.Tensor] = []
        if training.precision in MASTER_WEIGHTS:
            self.masters = [p.detach().float().clone() for p in self.params]
        self.accum: list[torch.Tensor] = []
        if training.precision in FP32_GRAD_ACCUMULATION:
            self.accum = [torch.zeros_like(p, dtype=torch.float32) for p in self.params]
        self.opt = make_optimizer(training.optimizer, self.masters or self.params,
                                  [n for n, _ in named])  # fmt: skip

    def zero_grad(self) -> None:
        for p in self.params + self.masters:
            p.grad = None

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.autocast is not None:
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self.model(idx, targets)
        return self.model(idx, targets)

    def backward(self, loss: torch.Tensor) -> None:
        (loss * self.scale if self.scale != 1.0 else loss).backward()
        if self.accum:
            with torch.no_grad():
                for a, p in zip(self.accum, self.params, strict=True):
                    if p.grad is not None:
                        a.add_(p.grad)

    def optimizer_step(self) -> None:
        if self.accum:  # the fp32 accumulation buffer is the master weights' gradient
            for m, a in zip(self.masters, self.accum, strict=True):
                m.grad = a
            self.opt.step()
            with torch.no_grad():
                for m, p, a in zip(self.masters, self.params, self.accum, strict=True):
                    p.copy_(m)
                    m.grad = None
                    a.zero_()
        elif self.masters:  # apex O2 / Megatron: fp32 master grads at step time, copy back
            for m, p in zip(self.masters, self.params, strict=True):
                m.grad = None if p.grad is None else p.grad.float()
                if m.grad is not None and self.scale != 1.0:
                    m.grad.div_(self.scale)
            self.opt.step()
            with torch.no_grad():
                for m, p in zip(self.masters, self.params, strict=True):
                    p.copy_(m)
                    m.grad = None
        else:
            if self.scale != 1.0:
                for p in self.params:
                    if p.grad is not None:
                        p.grad.div_(self.scale)
            self.opt.step()

    def step(self, idx: torch.Tensor, targets: torch.Tensor) -> float:
        self.zero_grad()
        loss = self.forward(idx, targets)
        self.backward(loss)
        self.optimizer_step()
        return float(loss.detach())

    def state_tensors(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(optimizer state tensors, step counters)."""
        states, steps = [], []
        for st in self.opt.state.values():
            for key, v in st.items():
                if isinstance(v, torch.Tensor):
                    (steps if key == "step" else states).append(v)
        return states, steps


def _warm_trainer(spec: ModelSpec, training: TrainingSpec, dev: torch.device, batch: int | None,
                  seed: int, warmup: int) -> tuple[ReferenceGPT, _Trainer, torch.Tensor,
                                                   torch.Tensor]:  # fmt: skip
    """The reference model, its trainer and one batch of random tokens, after ``warmup`` (at
    least one) steps: the first creates the optimizer state."""
    if training.optimizer == "adam8bit":
        raise NotImplementedError("the reference trainer has no bitsandbytes path for adam8bit")
    torch.manual_seed(seed)
    model = build_reference_model(spec, training).to(dev)
    assert isinstance(model, ReferenceGPT)
    b = batch if batch is not None else training.micro_batch
    idx = torch.randint(spec.vocab, (b, training.seq_len), device=dev)
    targets = torch.randint(spec.vocab, (b, training.seq_len), device=dev)
    trainer = _Trainer(model, training, dev)
    for _ in range(max(1, warmup)):
        trainer.step(idx, targets)
    return model, trainer, idx, targets
