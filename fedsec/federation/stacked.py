"""K copies of a Sequential model in one forward pass, without ``vmap``.

For a ``nn.Sequential`` of convolutions, linear layers, pooling, flattening and
parameter-free activations (the zoo's ``cnn`` and ``mlp``), K clients' copies
run as one model: a convolution becomes one grouped convolution over the K
clients' channels (activations laid out (B, K*C, H, W)), a linear layer one
batched matrix product (activations (K, B, F)). The gradient of the sum of
the K clients' losses with respect to the stacked parameters is, row by row,
each client's own gradient, since no client's loss depends on another's rows.

Why not ``torch.func.vmap``: on the CPU its batching rules for the digits CNN
pay layout changes around every pooling and convolution. Measured for one
training step of the digits CNN on one core of a lightly loaded 2-core host
(``loss_and_grads`` against per-client forward, backward and SGD steps): 20
clients x 32 samples take 46 ms one by one, 38 ms under vmap and 15 ms in the
grouped layout; 100 clients x 14 samples 166, 83 and 48 ms.
Models this module does not cover go through vmap (fedsec.federation.vectorized).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

_ELEMENTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                nn.Tanh, nn.Sigmoid, nn.Hardtanh, nn.Hardswish, nn.Hardsigmoid, nn.Softplus)
_CHANNELWISE = (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)


def unsupported(model: nn.Module) -> str | None:
    """Why :func:`forward` cannot run ``model``, or None."""
    if type(model) is not nn.Sequential:
        return f"not an nn.Sequential ({type(model).__name__})"
    for name, m in model.named_children():
        if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d:
            if m.padding_mode != "zeros" or isinstance(m.padding, str):
                return f"layer {name}: Conv2d with padding {m.padding!r} / mode {m.padding_mode!r}"
        elif type(m) is nn.Linear or type(m) is nn.Identity:
            pass
        elif type(m) in _ELEMENTWISE or type(m) in _CHANNELWISE:
            if any(True for _ in m.parameters()):
                return f"layer {name}: {type(m).__name__} with parameters"
            if isinstance(m, nn.AdaptiveMaxPool2d) and m.return_indices:
                return f"layer {name}: AdaptiveMaxPool2d returning indices"
            if isinstance(m, nn.MaxPool2d) and m.return_indices:
                return f"layer {name}: MaxPool2d returning indices"
        elif type(m) is nn.Flatten:
            if m.start_dim != 1 or m.end_dim != -1:
                return f"layer {name}: Flatten({m.start_dim}, {m.end_dim})"
        else:
            return f"layer {name}: {type(m).__name__}"
    return None


def forward(model: nn.Sequential, params: Mapping[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """Logits (K, B, classes) of K copies of ``model`` on their own inputs.

    ``params``: ``model``'s parameter names -> stacked tensors (K, *shape);
    ``x``: (K, B, *in_shape), client k's batch in row k. ``model`` must pass
    :func:`unsupported`; its own tensors are never read.
    """
    k, b = x.shape[0], x.shape[1]
    if x.dim() == 5:  # images: clients' channels side by side, (B, K*C, H, W)
        # in channels-last memory: CPU max-pooling over NCHW planes of a few pixels is
        # slower than the convolutions; channels-last pooling is 40x faster, and the
        # digits CNN's step 1.2-1.6x faster at 20-100 clients (equal at 1000)
        h = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:]).contiguous(memory_format=torch.channels_last)
        flat = False
    else:
        h, flat = x, True  # already (K, B, F)
    layers = list(model.named_children())
    for i, (name, m) in enumerate(layers):
        if isinstance(m, nn.MaxPool2d) and i and type(layers[i - 1][1]) is nn.ReLU and not flat:
            h = F.relu(m(h))  # the ReLU before it was deferred (below)
            continue
        if type(m) is nn.ReLU and i + 1 < len(layers) and isinstance(layers[i + 1][1], nn.MaxPool2d) and not flat:
            # relu(maxpool(x)) = maxpool(relu(x)) in value and in gradient (ReLU is monotone, and
            # where a window's max is <= 0 both give no gradient): pooling first makes the ReLU
            # and its backward 4x smaller.
            continue
        if isinstance(m, nn.Conv2d):
            assert not flat, f"layer {name}: a convolution after flattening"
            w = params[f"{name}.weight"]
            bias = params.get(f"{name}.bias")
            h = F.conv2d(h, w.reshape(k * w.shape[1], *w.shape[2:]), None if bias is None else bias.reshape(-1),
                         m.stride, m.padding, m.dilation, k * m.groups)
        elif isinstance(m, nn.Linear):
            if not flat:
                raise ValueError(f"layer {name}: Linear on an image (insert nn.Flatten)")
            w = params[f"{name}.weight"]
            bias = params.get(f"{name}.bias")
            h = (torch.bmm(h, w.transpose(1, 2)) if bias is None
                 else torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2)))
        elif isinstance(m, nn.Flatten):
            if not flat:
                h, flat = h.reshape(b, k, -1).transpose(0, 1), True
        elif isinstance(m, nn.AdaptiveAvgPool2d) and not flat and _same_size(m.output_size, h.shape[-2:]):
            pass  # the average of one element: the identity, bit for bit
        elif isinstance(m, nn.Identity):
            pass
        else:  # elementwise or per-channel: the layout does not matter
            h = m(h)
    if not flat:
        h = h.reshape(b, k, -1).transpose(0, 1)
    return h


def _same_size(out, hw: torch.Size) -> bool:
    o = (out, out) if isinstance(out, int) else tuple(out)
    return all(a is None or a == s for a, s in zip(o, hw))


def loss_and_grads(model: nn.Sequential, params: Mapping[str, torch.Tensor], consts: Mapping[str, torch.Tensor],
                   x: torch.Tensor, y: torch.Tensor,
                   w: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Each client's mean cross-entropy (K,) and its gradient (stacked like ``params``).

    ``params``: the trained parameters, ``consts``: frozen ones (no gradient),
    both name -> (K, *shape); ``y`` (K, B) labels; ``w`` (K, B) 1 for real
    samples, 0 for padding, or None (every sample real): client k's loss is the
    mean over its real samples.
    """
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    with torch.enable_grad():
        logits = forward(model, {**consts, **leaves}, x)
        k, b = y.shape
        ce = F.cross_entropy(logits.reshape(k * b, -1), y.reshape(-1), reduction="none").reshape(k, b)
        per_client = ce.mean(1) if w is None else (ce * w).sum(1) / w.sum(1)
        grads = torch.autograd.grad(per_client.sum(), list(leaves.values()))
    return dict(zip(leaves, grads)), per_client.detach()
