"""Vectorized clients: a round's plain-SGD clients trained together in one batched pass.

Design: a switch on the existing engines (``run.vectorize = true``), not an
engine of its own. Batching is a way of *executing* a batch of Flower messages,
so it lives in the executor of the engines that own their transport: the
``inline`` :class:`~fedsec.federation.engines.LocalGrid` runs :func:`execute`
on a round's messages, and the ``ray`` engine sends each actor one chunk of
vectorizable messages and the actor runs :func:`execute` on it. The ServerApp,
the strategy, the Grid, the Messages, the replies, failures, metrics and plugins
are the very objects of the per-client path, and the switch composes with both
engines (inline to debug, Ray to spread chunks over processes or GPUs). Flower's
own runtime (``flower``, ``flwr run``) sends each message to its own client
process, so there is nothing to batch there and the scenario rejects the switch.

How :func:`execute` runs a batch of messages:

1. **Split.** A train message joins the vectorized group when its partition's
   behaviour this round is :meth:`~fedsec.clients.Behaviour.vectorizable`
   (plain SGD plus data-level stages) and the model can be vectorized (below).
   Every other message runs the ClientApp, one after another, unchanged.
2. **Per client, exactly as the per-client path.** The same ``ClientTask``
   (:func:`fedsec.federation.client.client_task`: same data, generator seeded
   from (seed, "client", round, partition), global state), ``prepare``, then a
   lazy stream of its batches: per epoch ``torch.randperm(n, generator=g)``,
   then ``poison_batch`` of each batch, so its generator sees the same draws in
   the same order. The global RNG is seeded from (seed, "client-rng", round,
   partition) as the per-client path pins it, and carried per client across
   its stages.
3. **Train together.** Parameters stacked (K, ...); gradients from one
   grouped-layout pass for Sequential stacks of known layers (the zoo's cnn and
   mlp: fedsec.federation.stacked, 3x faster than vmap on the CPU), else from
   ``vmap(grad_and_value(loss))`` over ``functional_call``; SGD with momentum
   and weight decay written out as ``torch.optim.SGD`` computes it
   (:func:`sgd_step`). Memory bounds the clients per pass (a fraction of free
   GPU memory, or of the host's): larger groups run in several passes.
   Clients are sorted by step count, so the ones still training at step t
   are a prefix: a finished client's weights and momentum are never touched. A short batch is padded and masked, its loss averaged
   over its real samples (:func:`masked_cross_entropy`); when the model may mix
   samples in its forward pass (BatchNorm's batch statistics, any module we do
   not know to be per-sample), the step's clients are grouped by batch size
   instead, with no padding. BatchNorm running statistics are stacked buffers,
   updated in train mode per client.
4. **Finalize and reply.** Each client's trained state is loaded into the
   process's model object for its ``finalize`` (skipped when the behaviour has
   none), and one reply per message goes back with the per-client path's
   metrics (``train_loss`` of the last epoch, ``num-examples``,
   ``partition-id``, the behaviour's own).

Fallbacks to the per-client path, each logged once per process: a model whose
forward pass draws from the global RNG (dropout) or that ``torch.func`` cannot
run; and the whole group when the batched pass raises (a behaviour's
``poison_batch`` failing, say), so a failing client fails as it would alone.

Equivalence is to float tolerance, not bitwise (the batched kernels sum in
another order); tests/test_vectorized.py holds every returned parameter within
1e-4 of the per-client path, and the loop to 1e-10 of ``sgd_train`` in float64.
Models with BatchNorm on 8x8 digits amplify rounding (a 1e-7 change of the
start moves the per-client loop's own result by up to 3e-3 in 12 steps), so
over many steps their agreement is that of any two float32 runs. ``poison_batch`` sees ``task.model`` holding the
received global model G^t, never the client's current weights: a behaviour
whose ``poison_batch`` reads the model must report ``vectorizable() = False``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from flwr.app import ArrayRecord, Context, Message, MessageType, MetricRecord, RecordDict
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from fedsec.federation import stacked
from fedsec.federation.arrays import TensorArray, in_memory_content, tensor_record
from fedsec.federation.env import dataset_info, device_of, reusable_model, scenario_from_toml
from fedsec.seeding import derive_seed, torch_threads

log = logging.getLogger("fedsec.vectorized")
_SAID: set[str] = set()

OnReply = Callable[[Message], None] | None


def _say_once(text: str) -> None:
    if text not in _SAID:
        _SAID.add(text)
        log.warning(text)


# -- the maths: pure functions on stacked tensors --------------------------------------------


def masked_cross_entropy(logits: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the real samples of one padded batch.

    ``logits`` (B, C), ``y`` (B,) int64, ``w`` (B,) float: 1 for a real sample, 0
    for padding. Equals ``F.cross_entropy(logits[:b], y[:b])`` for the b real
    samples; padding contributes exactly 0 to the loss and its gradient.
    """
    ce = F.cross_entropy(logits, y, reduction="none")
    return (ce * w).sum() / w.sum()


@torch.no_grad()
def sgd_step(p: torch.Tensor, g: torch.Tensor, buf: torch.Tensor | None, *, lr: float, momentum: float,
             weight_decay: float, first: bool) -> None:
    """One ``torch.optim.SGD`` step (dampening 0, no Nesterov) on stacked tensors, in place.

    ``p`` (k, ...) parameters theta, ``g`` (k, ...) gradients, ``buf`` (k, ...)
    momentum buffers b (None without momentum); ``first``: the clients' first
    step, where SGD starts the buffer as a copy of the gradient. Writes p and buf:
    g <- g + wd * theta; b <- g (first) or mu * b + g; theta <- theta - lr * b.
    The operations are SGD's own (``add``, ``mul_``, ``add_(alpha=-lr)``), in its order.
    """
    if weight_decay != 0:
        g = g.add(p, alpha=weight_decay)
    if momentum != 0:
        assert buf is not None
        if first:
            buf.copy_(g)
        else:
            buf.mul_(momentum).add_(g)
        g = buf
    p.add_(g, alpha=-lr)


# -- which models, which messages -------------------------------------------------------------

# Modules whose forward treats every sample on its own: padding a short batch with
# masked rows cannot change the real rows' outputs. Anything else (BatchNorm's batch
# statistics, a custom forward) gets grouping by batch size instead.
_PER_SAMPLE = (
    nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Identity, nn.Flatten, nn.Unflatten,
    nn.Linear, nn.Bilinear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus, nn.Softmax, nn.LogSoftmax,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
    nn.LayerNorm, nn.GroupNorm, nn.Embedding, nn.ZeroPad2d, nn.ConstantPad2d,
)


def per_sample(model: nn.Module) -> bool:
    """True when every module of ``model`` is known to compute each sample on its own."""
    return all(type(m) in _PER_SAMPLE for m in model.modules())


@dataclass
class _Model:
    """What the batched pass needs of an architecture, worked out once per process."""

    template: nn.Module  # its own object: functional_call swaps tensors in, nothing writes it
    trainable: list[str]  # parameters SGD updates (requires_grad in a fresh model)
    frozen: list[str]  # parameters that stay as received
    buffers: list[str]
    extra: dict[str, torch.Tensor]  # non-persistent buffers (not in the state): the template's
    pad: bool  # short batches padded and masked (else grouped by size)
    stacked: bool = False  # fedsec.federation.stacked runs it (else vmap)
    unsupported: str | None = None
    per_client_bytes: int = 0


_MODELS: dict[tuple, _Model] = {}


def _model_info(scenario, device: torch.device, in_shape: tuple[int, ...], batch: int) -> _Model:
    """:func:`describe` of the scenario's model, once per process."""
    from fedsec.federation.env import new_model

    key = (scenario.model.name, repr(sorted(scenario.model.params.items())), scenario.data.dataset,
           scenario.run.seed, str(device), batch)
    if key not in _MODELS:
        if len(_MODELS) >= 8:
            _MODELS.pop(next(iter(_MODELS)))
        _MODELS[key] = describe(new_model(scenario), device, in_shape, batch)
    return _MODELS[key]


def describe(model: nn.Module, device: torch.device, in_shape: tuple[int, ...], batch: int,
             path: str = "auto") -> _Model:
    """How the batched pass trains ``model`` (a private copy is kept as the template).

    ``path``: ``"auto"`` (the grouped-layout forward of fedsec.federation.stacked
    when the model allows it, else vmap), ``"stacked"`` or ``"vmap"``.
    """
    import copy

    if path not in ("auto", "stacked", "vmap"):
        raise ValueError(f"path: got {path!r}, expected 'auto', 'stacked' or 'vmap'")
    template = copy.deepcopy(model).to(device).train()
    persistent = set(template.state_dict())
    params = dict(template.named_parameters())
    can_stack = stacked.unsupported(template) is None and not any(True for _ in template.buffers())
    if path == "stacked" and not can_stack:
        raise ValueError(f"path: 'stacked' cannot run this model ({stacked.unsupported(template) or 'it has buffers'})")
    info = _Model(
        template=template,
        trainable=[k for k, p in params.items() if p.requires_grad],
        frozen=[k for k, p in params.items() if not p.requires_grad],
        buffers=[k for k, _ in template.named_buffers()],
        extra={k: b.detach() for k, b in template.named_buffers() if k not in persistent},
        pad=per_sample(template),
        stacked=can_stack and path != "vmap",
    )
    info.unsupported = _probe(info, device, in_shape)
    if info.unsupported is None:
        info.per_client_bytes = _bytes_per_client(template, in_shape, batch, device)
    return info


def _probe(info: _Model, device: torch.device, in_shape: tuple[int, ...]) -> str | None:
    """Why this model cannot be trained in one batched pass, or None (runs a 2-client step)."""
    t = info.template
    dtype = next((p.dtype for p in t.parameters() if p.is_floating_point()), torch.float32)
    x = torch.rand((2, 3, *in_shape), generator=torch.Generator().manual_seed(0)).to(device, dtype)
    y = torch.zeros((2, 3), dtype=torch.long, device=device)
    params = {k: v.detach().unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in t.named_parameters()}
    buffers = {k: v.detach().unsqueeze(0).repeat(2, *[1] * v.dim()) for k, v in t.named_buffers()}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        before = torch.get_rng_state()
        cuda_before = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        try:
            with torch.no_grad():
                functional_call(t, ({k: v[0] for k, v in params.items()}, {k: v[0].clone() for k, v in buffers.items()}),
                                (x[0],))
        except Exception as e:  # the model cannot even run through functional_call
            return f"functional_call fails ({type(e).__name__}: {e})"
        drew = not torch.equal(before, torch.get_rng_state()) or (
            cuda_before is not None and not torch.equal(cuda_before, torch.cuda.get_rng_state(device)))
        if drew:
            return "its forward pass draws from the global RNG (dropout?), which one vmap pass cannot reproduce per client"
        try:
            fn = _grad_fn(info, masked=info.pad)
            p = {k: params[k] for k in info.trainable}
            c = {**{k: params[k] for k in info.frozen}, **buffers}
            fn(p, c, x, y, torch.ones(2, 3, device=device))
        except Exception as e:
            how = "the grouped-layout step" if info.stacked else "torch.func's vmap of its training step"
            return f"{how} fails ({type(e).__name__}: {e})"
    return None


def _bytes_per_client(model: nn.Module, in_shape: tuple[int, ...], batch: int, device: torch.device) -> int:
    """Rough memory of one client in the batched pass: parameters, gradients, momentum and
    temporaries (6 copies) plus activations kept for backward (3x every module output)."""
    n_param = sum(p.numel() * p.element_size() for p in model.parameters())
    outs: list[int] = []
    hooks = [m.register_forward_hook(lambda m, i, o: outs.append(o.numel() * o.element_size())
                                     if isinstance(o, torch.Tensor) else None)
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
            model(torch.zeros((1, *in_shape), device=device, dtype=dtype))
    finally:
        model.train()
        for h in hooks:
            h.remove()
    return 6 * n_param + 3 * batch * sum(outs)


def _memory_budget(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(0.6 * free)
    try:
        avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        avail = 8 << 30
    return int(0.25 * avail)


def _grad_fn(info: _Model, *, masked: bool):
    """(params, consts, x, y, w) -> (per-client gradients, per-client losses), all stacked (k, ...)."""
    t = info.template
    if info.stacked:
        return lambda p, c, x, y, w: stacked.loss_and_grads(t, p, c, x, y, w if masked else None)

    def loss(params, consts, x, y, w):
        out = functional_call(t, (params, consts), (x,))
        return masked_cross_entropy(out, y, w) if masked else F.cross_entropy(out, y)

    return vmap(grad_and_value(loss), in_dims=(0, 0, 0, 0, 0))


def _is_train(m: Message) -> bool:
    mt = m.metadata.message_type
    return mt == MessageType.TRAIN or mt.startswith(MessageType.TRAIN + ".")


def vectorizable(message: Message, context: Context) -> bool:
    """True when ``message`` is a train message of a ``run.vectorize`` scenario whose
    partition runs a vectorizable behaviour this round (the model is checked later)."""
    from fedsec.clients import BEHAVIOURS, Honest

    if not _is_train(message) or message.has_error():
        return False
    try:
        cfg = message.content["config"]
        s = scenario_from_toml(str(cfg["scenario"]))
        if not s.run.vectorize:
            return False
        pid = int(context.node_config["partition-id"])
        role = s.role(pid, int(cfg["server-round"]))
        cls = Honest if role is None else BEHAVIOURS.get(role.behaviour)
        return bool(cls.vectorizable())
    except Exception:  # anything odd: the per-client path reports it properly
        return False


# -- one client of the group --------------------------------------------------------------------


@dataclass(eq=False)
class _Client:
    index: int  # position in the executor's message list
    message: Message
    pid: int
    behaviour: Any
    task: Any
    seed: int
    stages: frozenset[str]
    rng: torch.Tensor | None = None  # this client's global-RNG state between its stages
    steps: int = 0
    per_epoch: int = 0
    stream: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None
    loss: float = 0.0

    def poison(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The behaviour's ``poison_batch`` on this client's batch, in its RNG state."""
        return self.scoped(lambda: self.behaviour.poison_batch(x, y, self.task))

    def scoped(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` with the global RNG in this client's state (seeded on first use)."""
        if self.rng is None:
            torch.default_generator.manual_seed(self.seed)
        else:
            torch.set_rng_state(self.rng)
        try:
            return fn()
        finally:
            self.rng = torch.get_rng_state()


def batches(data, generator: torch.Generator, batch_size: int, epochs: int,
            poison: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
            ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """A client's batches in the per-client loop's order (fedsec.training.sgd_train):
    per epoch ``randperm(n, generator)``, then each batch, through ``poison`` if given."""
    n = len(data)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x, y = data.x[idx], data.y[idx]
            if poison is not None:
                x, y = poison(x, y)
            yield x, y


class _GroupFailed(Exception):
    """The batched pass cannot go on; the group reruns on the per-client path."""


# -- the batched pass ---------------------------------------------------------------------------


def _assemble(batches: Sequence[tuple[torch.Tensor, torch.Tensor]], device: torch.device, pad: bool):
    """Stack k batches into (k, B, ...), (k, B) and the mask (k, B) (B: the largest batch)."""
    sizes = [len(y) for _, y in batches]
    width = max(sizes)
    if min(sizes) == width:
        x = torch.stack([b[0] for b in batches])
        y = torch.stack([b[1] for b in batches])
        w = torch.ones(y.shape, dtype=x.dtype)
    else:
        assert pad, "batches of different sizes are grouped, not padded, for this model"
        x0, y0 = batches[0]
        x = x0.new_zeros((len(batches), width, *x0.shape[1:]))
        y = y0.new_zeros((len(batches), width))
        w = x0.new_zeros((len(batches), width))
        for j, (xb, yb) in enumerate(batches):
            x[j, : len(yb)] = xb
            y[j, : len(yb)] = yb
            w[j, : len(yb)] = 1
    return x.to(device, non_blocking=True), y.to(device, non_blocking=True), w.to(device, non_blocking=True)


def train_together(info: _Model, global_state: dict[str, torch.Tensor], clients: list[_Client], *,
                   epochs: int, lr: float, momentum: float, weight_decay: float,
                   device: torch.device) -> dict[str, torch.Tensor]:
    """Local SGD of ``clients`` (sorted by step count, descending) in one batched pass.

    Returns the stacked trained state: every key of ``global_state`` -> (K, ...),
    row j the state client j submits before its ``finalize``. Sets each client's
    ``loss`` (mean over its last epoch, as ``sgd_train`` reports it).
    """
    K = len(clients)
    steps = [c.steps for c in clients]
    assert steps == sorted(steps, reverse=True), "clients must be sorted by step count, descending"

    def rows_of(v: torch.Tensor) -> torch.Tensor:
        v = v.to(device)
        return v.unsqueeze(0).expand(K, *v.shape).clone()

    P = {k: rows_of(global_state[k]) for k in info.trainable}
    C = {k: rows_of(global_state[k] if k in global_state else info.extra[k]) for k in info.frozen + info.buffers}
    M = {k: torch.empty_like(v) for k, v in P.items()} if momentum != 0 else None
    fns = {masked: _grad_fn(info, masked=masked) for masked in (True, False)}
    loss_sum = torch.zeros(K, dtype=torch.float64)
    seen = torch.zeros(K, dtype=torch.float64)

    for t in range(steps[0] if K else 0):
        k = sum(1 for s in steps if s > t)
        batches = []
        for c in clients[:k]:
            try:
                batches.append(next(c.stream))
            except StopIteration:
                raise _GroupFailed(f"partition {c.pid}: its batch stream ended early") from None
            except Exception as e:
                raise _GroupFailed(f"partition {c.pid}: {type(e).__name__}: {e}") from e
        sizes = torch.tensor([len(b[1]) for b in batches], dtype=torch.float64)
        if info.pad or len(set(sizes.tolist())) == 1:
            groups = [list(range(k))]
        else:
            by_size: dict[int, list[int]] = {}
            for j, b in enumerate(batches):
                by_size.setdefault(len(b[1]), []).append(j)
            groups = list(by_size.values())
        values = torch.empty(k, dtype=torch.float64)
        for js in groups:
            whole = len(js) == k
            x, y, w = _assemble([batches[j] for j in js], device, info.pad)
            masked = bool((w == 0).any())
            if whole:
                p = {n: v[:k] for n, v in P.items()}
                c_ = {n: v[:k] for n, v in C.items()}
                m = {n: v[:k] for n, v in M.items()} if M is not None else None
            else:
                ix = torch.tensor(js, device=device)
                p = {n: v.index_select(0, ix) for n, v in P.items()}
                c_ = {n: v.index_select(0, ix) for n, v in C.items()}
                m = {n: v.index_select(0, ix) for n, v in M.items()} if M is not None else None
            grads, loss = fns[masked](p, c_, x, y, w)
            for n in p:
                sgd_step(p[n], grads[n], m[n] if m is not None else None, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, first=t == 0)
            if not whole:  # the gathered copies go back to their rows
                for n in p:
                    P[n].index_copy_(0, ix, p[n])
                    if m is not None:
                        M[n].index_copy_(0, ix, m[n])  # type: ignore[index]
                for n in c_:
                    C[n].index_copy_(0, ix, c_[n])
            values[js] = loss.detach().to("cpu", torch.float64)
        # sgd_train reports the mean loss of the last epoch, weighted by batch size.
        last = torch.tensor([t >= c.steps - c.per_epoch for c in clients[:k]])
        loss_sum[:k] += torch.where(last, values * sizes, 0.0)
        seen[:k] += torch.where(last, sizes, 0.0)
    for j, c in enumerate(clients):
        c.loss = float(loss_sum[j] / max(float(seen[j]), 1.0))
    return {k: (P[k] if k in P else C[k]) for k in global_state}


def sgd_train_many(model: nn.Module, state: dict[str, torch.Tensor], datasets: Sequence[Any],
                   generators: Sequence[torch.Generator], *, epochs: int, batch_size: int, lr: float,
                   momentum: float = 0.0, weight_decay: float = 0.0, device: str | torch.device = "cpu",
                   path: str = "auto") -> tuple[list[dict[str, torch.Tensor]], list[float]]:
    """:func:`fedsec.training.sgd_train` of K clients in one batched pass.

    Client k starts from ``state`` (``model``'s state dict), trains on
    ``datasets[k]`` (a TensorData) with batch order from ``generators[k]``,
    exactly as ``sgd_train`` would (same draws, same SGD), to float tolerance.
    Returns each client's trained state (``state``'s keys, on ``device``) and
    its mean loss over the last epoch. ``path``: see :func:`describe`.
    """
    if len(datasets) != len(generators):
        raise ValueError(f"generators: got {len(generators)}, expected one per dataset ({len(datasets)})")
    device = torch.device(device)
    first = next((d for d in datasets if len(d)), None)
    in_shape = tuple(first.x.shape[1:]) if first is not None else ()
    info = describe(model, device, in_shape, batch_size, path)
    if info.unsupported:
        raise ValueError(f"model: cannot be trained in one batched pass: {info.unsupported}")
    clients = []
    for k, (data, g) in enumerate(zip(datasets, generators)):
        cl = _Client(index=k, message=None, pid=k, behaviour=None, task=None, seed=0, stages=frozenset())
        cl.per_epoch = math.ceil(len(data) / batch_size)
        cl.steps = epochs * cl.per_epoch
        cl.stream = batches(data, g, batch_size, epochs)
        clients.append(cl)
    order = sorted(clients, key=lambda c: (-c.steps, c.index))
    out = train_together(info, state, order, epochs=epochs, lr=lr, momentum=momentum,
                         weight_decay=weight_decay, device=device)
    row = {c.index: j for j, c in enumerate(order)}
    return ([{n: v[row[k]] for n, v in out.items()} for k in range(len(clients))],
            [c.loss for c in clients])


# -- the executor ---------------------------------------------------------------------------------


def _error_reply(msg: Message, exc: BaseException) -> Message:
    from fedsec.federation.engines import error_reply

    return error_reply(msg, exc)


def _per_client(app, msg: Message, ctx: Context) -> Message:
    try:
        return app(msg, ctx)
    except Exception as e:  # a failing client must not stop the round
        return _error_reply(msg, e)


def execute(app, messages: Sequence[Message], contexts: Sequence[Context], on_reply: OnReply = None,
            *, vectorize: bool = True) -> list[Message]:
    """Run a batch of messages for the ClientApp ``app``: one reply per message, in order.

    Arrays are handed over in memory (decoded once per distinct content). With
    ``vectorize`` (and ``app`` fedsec's ClientApp), train messages whose clients
    are vectorizable are trained together (module docstring); the rest run ``app``
    one by one, an exception becoming that message's error reply.
    """
    from fedsec.federation.client import client_app

    shared: dict[int, RecordDict] = {}
    local = []
    for m in messages:
        if id(m.content) not in shared and not m.has_error():
            shared[id(m.content)] = in_memory_content(m.content)
        local.append(_with_content(m, shared[id(m.content)]) if not m.has_error() else m)
    replies: list[Message | None] = [None] * len(messages)

    def done(i: int, reply: Message) -> None:
        replies[i] = reply
        if on_reply:
            on_reply(reply)

    groups: dict[int, list[int]] = {}
    if vectorize and app is client_app:
        for i, (m, c) in enumerate(zip(local, contexts)):
            if vectorizable(m, c):
                groups.setdefault(id(m.content), []).append(i)
    for idx in groups.values():
        for i, reply in _run_group(local, contexts, idx).items():
            done(i, reply)
    for i, (m, c) in enumerate(zip(local, contexts)):
        if replies[i] is None:
            done(i, _per_client(app, m, c))
    return replies  # type: ignore[return-value]


def _with_content(m: Message, content: RecordDict) -> Message:
    """``m`` (same metadata, so a reply still answers it) carrying ``content``."""
    import copy

    out = copy.copy(m)
    out.__dict__["_content"] = content
    return out


def _run_group(messages: Sequence[Message], contexts: Sequence[Context], idx: list[int]) -> dict[int, Message]:
    """Train the vectorizable messages ``idx`` (one round, one content) together.

    Returns replies for the messages it settled; the others go to the per-client path."""
    from fedsec.federation.client import client_task, reply_metrics
    from fedsec.federation.deployment import node_data

    cfg = messages[idx[0]].content["config"]
    s = scenario_from_toml(str(cfg["scenario"]))
    rnd = int(cfg["server-round"])
    num_sampled = int(cfg.get("num-sampled", s.data.num_clients))
    global_state = messages[idx[0]].content["arrays"].to_torch_state_dict()
    device = device_of(s)
    c = s.client
    out: dict[int, Message] = {}
    with torch_threads(s.run.threads), torch.random.fork_rng(devices=[]):
        info = _model_info(s, device, tuple(dataset_info(s)[0]), c.batch_size)
        if info.unsupported:
            _say_once(f"run.vectorize: model {s.model.name!r} trains per client: {info.unsupported}")
            return out
        model = reusable_model(s, global_state, device)
        clients: list[_Client] = []
        for i in idx:
            pid = int(contexts[i].node_config["partition-id"])
            try:
                behaviour, task = client_task(s, pid, rnd, num_sampled, global_state, model,
                                              data=node_data(s, contexts[i].node_config))
                cl = _Client(index=i, message=messages[i], pid=pid, behaviour=behaviour, task=task,
                             seed=derive_seed(s.run.seed, "client-rng", rnd, pid),
                             stages=type(behaviour).overridden_stages())
                if "prepare" in cl.stages:
                    reusable_model(s, global_state, device)  # what a fresh client would see
                    cl.scoped(lambda: behaviour.prepare(task))
            except Exception as e:
                out[i] = _error_reply(messages[i], e)
                continue
            n = len(cl.task.data)
            cl.per_epoch = math.ceil(n / c.batch_size)
            cl.steps = c.epochs * cl.per_epoch
            cl.stream = batches(cl.task.data, cl.task.generator, c.batch_size, c.epochs,
                                cl.poison if "poison_batch" in cl.stages else None)
            clients.append(cl)
        if not clients:
            return out
        clients.sort(key=lambda cl: (-cl.steps, cl.pid))
        cap = max(1, _memory_budget(device) // max(info.per_client_bytes, 1))
        trained: dict[int, tuple[dict[str, torch.Tensor], int]] = {}
        try:
            for start in range(0, len(clients), cap):
                chunk = clients[start : start + cap]
                rows = train_together(info, global_state, chunk, epochs=c.epochs, lr=c.lr,
                                      momentum=c.momentum, weight_decay=c.weight_decay, device=device)
                for j, cl in enumerate(chunk):
                    for _ in cl.stream:  # the per-client loop's draws end here too
                        raise _GroupFailed(f"partition {cl.pid}: more batches than steps")
                    trained[cl.index] = (rows, j)
        except Exception as e:  # the per-client path gives each client its own outcome
            _say_once(f"run.vectorize: a batched pass failed, its clients retrain one by one "
                      f"({type(e).__name__}: {e})" if not isinstance(e, _GroupFailed) else
                      f"run.vectorize: a batched pass failed, its clients retrain one by one ({e})")
            return out
        on_host: dict[int, dict[str, torch.Tensor]] = {}

        def host(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
            """The chunk's stacked state on the CPU, moved once (a no-op on the CPU)."""
            if id(rows) not in on_host:
                on_host[id(rows)] = {k: v.cpu() for k, v in rows.items()}
            return on_host[id(rows)]

        for cl in sorted(clients, key=lambda cl: cl.index):
            rows, j = trained[cl.index]
            try:
                if "finalize" in cl.stages:
                    m = reusable_model(s, {k: v[j] for k, v in rows.items()}, device)
                    cl.task.model = m
                    cl.scoped(lambda cl=cl: cl.behaviour.finalize(cl.task))
                    state = m.state_dict()
                    arrays = tensor_record(state)
                else:  # rows of the stacked result, which nothing writes any more: no copy
                    arrays = ArrayRecord()
                    for k, v in host(rows).items():
                        arrays[k] = TensorArray.adopt(v[j])
                stats = {"train_loss": cl.loss, "num-examples": float(len(cl.task.data)), **cl.task.metrics}
                content = RecordDict({"arrays": arrays,
                                      "metrics": MetricRecord(reply_metrics(stats, cl.pid))})
                out[cl.index] = Message(content, reply_to=cl.message)
            except Exception as e:
                out[cl.index] = _error_reply(cl.message, e)
    return out


# -- Ray: chunks of vectorizable messages per actor ------------------------------------------------


def plan_chunks(messages: Sequence[Message], contexts: Sequence[Context], workers: int) -> tuple[list[list[int]], list[int]]:
    """Split a round's messages for ``workers`` actors: (chunks of vectorizable message
    indices sharing one payload, one per actor at most, balanced by partition size;
    the other indices)."""
    vec = [i for i, (m, c) in enumerate(zip(messages, contexts)) if vectorizable(m, c)]
    vec = [i for i in vec if messages[i].content is messages[vec[0]].content]  # a chunk shares one payload
    chosen = set(vec)
    rest = [i for i in range(len(messages)) if i not in chosen]
    return (spread(messages, contexts, vec, workers) if vec else []), rest


def spread(messages: Sequence[Message], contexts: Sequence[Context], idx: Sequence[int], n: int) -> list[list[int]]:
    """``idx`` in at most ``n`` chunks of similar work: largest partition first, each to the
    lightest chunk so far (a message that is not a train message weighs 1)."""
    from fedsec.federation.env import partitions_of

    def weight(i: int) -> int:
        m = messages[i]
        if not _is_train(m) or m.has_error():
            return 1
        try:
            s = scenario_from_toml(str(m.content["config"]["scenario"]))
            return max(1, len(partitions_of(s)[int(contexts[i].node_config["partition-id"])]))
        except Exception:  # unknown sizes: count messages
            return 1

    n = max(1, min(n, len(idx)))
    chunks: list[list[int]] = [[] for _ in range(n)]
    load = [0] * n
    for w, i in sorted(((weight(i), i) for i in idx), key=lambda t: (-t[0], t[1])):
        j = load.index(min(load))
        chunks[j].append(i)
        load[j] += w
    return [sorted(ch) for ch in chunks if ch]
