"""Inference rewrites: batch norm folded into the convolution before it, dropout removed.

Folding: in eval mode BN is the affine map y = γ (z − μ) / √(σ² + ε) + β of the
convolution's output z = W x + b, so the convolution W' = W · s, b' = (b − μ) · s + β
with s = γ / √(σ² + ε) (per output channel) computes y in one op
(`torch.nn.utils.fusion.fuse_conv_bn_eval`, transposed convolutions included).
That is only the same function when the convolution's output feeds nothing but the
BN, and when each of the two modules runs exactly once (a module called twice, like
MTAN's shared refinement, could be followed by different things at each call).
Which pairs qualify is read off one eager forward: module hooks say which tensor each
conv produced and each BN consumed, and a dispatch mode sees every op that read the
conv's output. Layers inside a block (a ResNet block's conv1→bn1) fold the same way as
layers of the spec's own lists.

All rewrites apply to a deep copy: the compiled model (the reference the export is
checked against) keeps its modules.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import fx, nn
from torch.nn.modules.dropout import _DropoutNd
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Rewrites:
    """What `for_inference` changed, by module name."""

    folded: list[tuple[str, str]] = field(default_factory=list)  # (conv, bn)
    kept_bn: list[str] = field(default_factory=list)  # BNs with no conv to fold into
    dropout: list[str] = field(default_factory=list)


class _Readers(TorchDispatchMode):
    """Records, for every op, the ids of the tensors it read (while hooks say where we are)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[set[int], str | None]] = []  # (input ids, BN running it)
        self.in_bn: str | None = None
        self.keep: list[torch.Tensor] = []  # keeps ids unique for the whole forward

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        ins = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        self.keep += ins
        self.ops.append(({id(t) for t in ins}, self.in_bn))
        out = func(*args, **kwargs)
        self.keep += [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
        return out


def _foldable(model: nn.Module, example: tuple) -> tuple[list[tuple[str, str]], list[str]]:
    """(conv, bn) pairs whose folding keeps `model`'s function, and the BNs left alone."""
    names = {m: n for n, m in model.named_modules()}
    calls: dict[str, int] = {}
    produced: dict[int, str] = {}  # id of a conv's output → the conv
    consumed: dict[str, int] = {}  # BN → id of its input
    readers = _Readers()
    hooks = []

    def count(m: nn.Module, *_: object) -> None:
        calls[names[m]] = calls.get(names[m], 0) + 1

    def conv_out(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        produced[id(out)] = names[m]
        readers.keep.append(out)

    def bn_in(m: nn.Module, args: tuple) -> None:
        consumed[names[m]] = id(args[0])
        readers.in_bn = names[m]

    def bn_out(m: nn.Module, args: tuple, out: torch.Tensor) -> None:
        readers.in_bn = None

    for m in model.modules():
        if isinstance(m, _CONVS + _NORMS):
            hooks.append(m.register_forward_pre_hook(count))
        if isinstance(m, _CONVS):
            hooks.append(m.register_forward_hook(conv_out))
        elif isinstance(m, _NORMS):
            hooks += [m.register_forward_pre_hook(bn_in), m.register_forward_hook(bn_out)]
    try:
        with torch.no_grad(), readers:
            outputs = model(*example)
    finally:
        for h in hooks:
            h.remove()
    returned = {id(t) for t in pytree.tree_leaves(outputs) if isinstance(t, torch.Tensor)}
    pairs, kept = [], []
    for bn, tensor in consumed.items():
        conv = produced.get(tensor)
        module = model.get_submodule(bn)
        ok = (
            conv is not None
            and calls.get(conv) == 1
            and calls.get(bn) == 1
            and tensor not in returned
            and module.track_running_stats
            and module.running_mean is not None
            and all(who == bn for ids, who in readers.ops if tensor in ids)
        )
        if ok:
            pairs.append((conv, bn))
        else:
            kept.append(bn)
    return pairs, kept


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, module)


def for_inference(gm: fx.GraphModule, example: tuple) -> tuple[fx.GraphModule, Rewrites]:
    """A copy of `gm` in eval mode, BN folded into convolutions, dropout removed.

    `example` is one input batch (its values do not matter, only the data flow).
    Weights no longer require grad: the copy is for serving.
    """
    model = copy.deepcopy(gm).eval()
    done = Rewrites()
    for name, m in list(model.named_modules()):
        if isinstance(m, _DropoutNd):
            _replace(model, name, nn.Identity())
            done.dropout.append(name)
    pairs, done.kept_bn = _foldable(model, example)
    for conv, bn in pairs:
        c = model.get_submodule(conv)
        transpose = isinstance(c, (nn.ConvTranspose1d, nn.ConvTranspose2d))
        _replace(model, conv, fuse_conv_bn_eval(c, model.get_submodule(bn), transpose=transpose))
        _replace(model, bn, nn.Identity())
        done.folded.append((conv, bn))
    for p in model.parameters():
        p.requires_grad_(False)
    model.recompile()
    return model, done


__all__ = ["Rewrites", "for_inference"]
