"""The ops the column fusion pass lowers T per-task copies to, one class per layer type.

T tasks' copies of one layer run as one op on *stacked* activations: task t's feature
map is channels `[t·C, (t+1)·C)` of one `[N, T·C, ...]` tensor. Every fused op keeps
its T member modules (the ones the unfused graph calls) as a plain tuple, not as
submodules, and reads their parameters in each forward (`torch.cat` of the members'
weights, which autograd splits back into the members' gradients). So the fused
model's `state_dict`, `named_parameters`, optimiser groups and `lr_mult` attributes are
the unfused model's, and a checkpoint of one loads into the other unchanged.

Two ways a run of copies enters a fused op:

- **stacked**: member t reads slice t of a stacked value (`forward(x_stacked)`);
- **broadcast**: every member reads the same tensor (a shared stage's output, NDDR's
  concatenation), so the copies are one wider layer (`forward(x)`).

Why each lowering is exact is in its class docstring. A layer type not in `RULES` (or a
run whose members differ) is left unfused; `register` adds a type (a sharing unit's
file registers its own, as `mtlc.sharing.cross_stitch` does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

Members = Sequence[nn.Module]


class Fused(nn.Module):
    """T member modules of one configuration run as one op; the members keep the weights.

    Override points for a new layer type: `accepts(members, mode)` (can these members be
    fused in `mode`, "stacked" | "broadcast" | "mix"), `pays(mode, device)` (is the fused
    form worth it on that device type) and `forward`.
    """

    modes: frozenset[str] = frozenset({"stacked"})
    # stateless and deterministic: copies reading one tensor give one result, computed once
    pure = False

    def __init__(self, members: Members, mode: str):
        super().__init__()
        self.members = tuple(members)  # a tuple is not registered: parameters stay theirs
        self.tasks = len(self.members)
        self.mode = mode

    @classmethod
    def accepts(cls, members: Members, mode: str) -> bool:
        return mode in cls.modes

    @classmethod
    def pays(cls, mode: str, device: str) -> bool:
        """Whether the fused form is faster on `device` (a device type).

        On the CPU it is not: kernel launches cost little there, while stacking adds
        copies (views of a stacked tensor are not contiguous) and grouped convolutions
        run well below T separate ones (oneDNN and the native kernels alike). Measured
        on `specs/cross_stitch.yaml`, batch 16, one thread: fused 1.19×, fusing only
        the shared-input convolutions still 1.11× the unfused step time
        (`benchmarks/bench_fusion.py`, benchmarks/RESULTS.md). So on the CPU only
        copies that compute the same value are merged (`pure`, below), which is free.
        """
        return device != "cpu"

    def cat(self, name: str, dim: int = 0) -> torch.Tensor | None:
        """The members' parameter `name` concatenated (None when they have none)."""
        first = getattr(self.members[0], name)
        if first is None:
            return None
        return torch.cat([getattr(m, name) for m in self.members], dim)

    def extra_repr(self) -> str:
        return f"{self.mode} × {self.tasks}: {self.members[0]!r}"


class Channelwise(Fused):
    """Layers that treat channels independently (activations, pooling, upsampling, flatten).

    Running the first member on the stacked tensor is exactly running each member on its
    own slice: they hold no weights and mix no channels. T copies reading one tensor
    compute the same value, so they run once ("broadcast": the pass calls the first copy
    and hands its result to every task). `nn.Flatten` (start_dim 1) is
    exact too: flattening `[N, T·C, H, W]` lays the tasks out one after another, which is
    the concatenation of the per-task flattened vectors.
    """

    modes = frozenset({"stacked", "broadcast"})
    pure = True

    @classmethod
    def pays(cls, mode: str, device: str) -> bool:
        return mode == "broadcast" or device != "cpu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.members[0](x)

    @classmethod
    def accepts(cls, members: Members, mode: str) -> bool:
        first = members[0]
        if isinstance(first, nn.Flatten) and (first.start_dim, first.end_dim) != (1, -1):
            return False
        return super().accepts(members, mode)


class FusedConv(Fused):
    """T convolutions as one: stacked input → `groups = g·T`; shared input → outputs concatenated.

    A grouped convolution with groups g·T computes output block t from input block t only,
    with member t's weight: the T separate convolutions, the same multiply-adds (so the
    same FLOPs). On a shared input the members are one convolution with T·C_out outputs
    (groups 1 only: with g > 1 the output order would interleave the members).
    """

    modes = frozenset({"stacked", "broadcast"})

    @classmethod
    def accepts(cls, members: Members, mode: str) -> bool:
        first = members[0]
        if first.padding_mode != "zeros" or isinstance(first.padding, str):
            return False
        return mode == "stacked" or first.groups == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members[0]
        transposed = isinstance(m, nn.ConvTranspose2d)
        # ConvTranspose weights are [C_in, C_out/g, k, k]: a shared input stacks outputs on dim 1
        dim = 1 if transposed and self.mode == "broadcast" else 0
        weight, bias = self.cat("weight", dim), self.cat("bias")
        groups = m.groups * (self.tasks if self.mode == "stacked" else 1)
        if transposed:
            return F.conv_transpose2d(
                x, weight, bias, m.stride, m.padding, m.output_padding, groups, m.dilation
            )
        return F.conv2d(x, weight, bias, m.stride, m.padding, m.dilation, groups)


class FusedLinear(Fused):
    """T linear maps: on a shared input one map with T·F_out outputs; stacked, a batched matmul.

    Stacked `[N, T·F]` is viewed as `[N, T, F]` and `y[n,t] = W_t x[n,t] + b_t` is one
    einsum over the task axis: the same multiply-adds as the T separate maps.
    """

    modes = frozenset({"stacked", "broadcast"})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode == "broadcast":
            return F.linear(x, self.cat("weight"), self.cat("bias"))
        weight = torch.stack([m.weight for m in self.members])  # [T, out, in]
        y = torch.einsum("ntf,tof->nto", x.reshape(x.shape[0], self.tasks, -1), weight)
        if self.members[0].bias is not None:
            y = y + torch.stack([m.bias for m in self.members])
        return y.reshape(x.shape[0], -1)

    @classmethod
    def accepts(cls, members: Members, mode: str) -> bool:
        return True


class FusedBatchNorm(Fused):
    """T batch norms over C channels each are one over T·C channels.

    Batch norm normalises every channel with that channel's own batch statistics and
    affine pair, so the T·C-channel norm is exactly the T per-task norms. The members'
    running statistics are read concatenated and written back after a training step.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members[0]
        training = m.training or not m.track_running_stats
        factor = 0.0 if m.momentum is None else m.momentum
        mean = var = None
        if m.track_running_stats:
            mean, var = self.cat("running_mean"), self.cat("running_var")
            if m.training:
                for member in self.members:
                    member.num_batches_tracked.add_(1)
                if m.momentum is None:  # cumulative moving average, as nn.BatchNorm
                    factor = 1.0 / float(m.num_batches_tracked)
        y = F.batch_norm(
            x, mean, var, self.cat("weight"), self.cat("bias"), training, factor, m.eps
        )
        if m.training and m.track_running_stats:
            with torch.no_grad():
                for member, r_mean, r_var in zip(
                    self.members, mean.chunk(self.tasks), var.chunk(self.tasks), strict=True
                ):
                    member.running_mean.copy_(r_mean)
                    member.running_var.copy_(r_var)
        return y


class FusedGroupNorm(Fused):
    """T group norms with g groups over C channels are one with g·T groups over T·C channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members[0]
        return F.group_norm(
            x, m.num_groups * self.tasks, self.cat("weight"), self.cat("bias"), m.eps
        )


class FusedLayerNorm(Fused):
    """T layer norms of F features: normalise each task's `[N, T, F]` row, then its own affine."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.members[0]
        y = F.layer_norm(x.reshape(x.shape[0], self.tasks, -1), m.normalized_shape, eps=m.eps)
        if m.weight is not None:
            y = y * torch.stack([k.weight for k in self.members])
        if m.bias is not None:
            y = y + torch.stack([k.bias for k in self.members])
        return y.reshape(x.shape[0], -1)

    @classmethod
    def accepts(cls, members: Members, mode: str) -> bool:
        return mode == "stacked" and len(members[0].normalized_shape) == 1


# layer type → its fused op; looked up along the type's MRO (`rule_for`)
RULES: dict[type, type[Fused]] = {
    nn.Conv2d: FusedConv,
    nn.ConvTranspose2d: FusedConv,
    nn.Linear: FusedLinear,
    nn.BatchNorm1d: FusedBatchNorm,
    nn.BatchNorm2d: FusedBatchNorm,
    nn.GroupNorm: FusedGroupNorm,
    nn.LayerNorm: FusedLayerNorm,
    **dict.fromkeys(
        (
            nn.ReLU,
            nn.GELU,
            nn.SiLU,
            nn.Sigmoid,
            nn.Tanh,
            nn.Identity,
            nn.MaxPool2d,
            nn.AvgPool2d,
            nn.AdaptiveAvgPool2d,
            nn.Upsample,
            nn.Flatten,
        ),
        Channelwise,
    ),
}


def register(layer: type[nn.Module]) -> Callable[[type[Fused]], type[Fused]]:
    """Class decorator: `@register(MyUnit) class FusedMyUnit(Fused): ...`."""

    def add(rule: type[Fused]) -> type[Fused]:
        RULES[layer] = rule
        return rule

    return add


def rule_for(module: nn.Module) -> type[Fused] | None:
    for cls in type(module).__mro__:
        if cls in RULES:
            return RULES[cls]
    return None
