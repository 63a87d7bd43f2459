"""Column fusion: runs of per-task copies in an fx graph become one op on stacked activations.

A spec with `separate`, `cross_stitch` or `nddr` stages (or per-task heads of one
shape) compiles to T copies of each layer, one per task, which run as T small kernels
one after another. This pass rewrites such runs into one fused op each
(`mtlc.compiler.fused_ops`) on a stacked value `[N, T·C, ...]` (task t in channels
`[t·C, (t+1)·C)`), so T columns cost one kernel launch:

- copies that all read one tensor (the first stage after a shared one, NDDR's
  concatenation, heads on a shared feature) become one wider layer ("broadcast"), or
  one call when they hold no weights (T poolings of one tensor are one pooling);
- copies that read the T slices of a stacked value, in its order, become one grouped
  layer ("stacked"), and the run continues;
- a unit whose inputs are exactly a stacked value's members ("mix": the cross-stitch
  unit) runs once on it, its outputs are the members of a new stacked value;
- `torch.cat(members, dim=1)` of a stacked value's members (NDDR) *is* the stacked value.

Anything else reads a member through `torch.chunk(stacked, T, 1)[t]` (a view), so any
graph stays correct: fusion stops where copies differ (unequal head widths, dropout,
layers without a rule) and starts again at the next broadcast. Every lowering is exact
mathematically (`fused_ops` says why per layer); floating-point results differ by
rounding only.

The fused graph keeps every original module at its original path (only the fused ops'
`tuple` of members refers to them), so names, parameters, buffers and state dicts are
the unfused model's. Subclass `ColumnFusion` and override `equivalent`, `siblings` or
`lower` to change what is fused, as with `torch.fx.Interpreter`.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx, nn

from mtlc.compiler.fused_ops import Fused, rule_for
from mtlc.compiler.reload import new_graph

FUSED_ROOT = "fused"  # top-level container of the fused ops in the rewritten GraphModule


@dataclass
class Stack:
    """A stacked value in the new graph and the original nodes it holds, in slice order."""

    node: fx.Node
    members: list[fx.Node]
    chunks: fx.Node | None = None
    views: dict[int, fx.Node] = field(default_factory=dict)


class ColumnFusion:
    """Rewrites a GraphModule so that runs of equivalent per-task copies run as one op.

    `device` is the device type the model will run on ("cpu", "cuda", ...): a lowering
    whose fused form is slower there (`Fused.pays`) is skipped.
    """

    def __init__(self, gm: fx.GraphModule, device: str = "cuda"):
        self.gm = gm
        self.device = device
        self.modules = dict(gm.named_modules())
        self.graph = new_graph()
        self.env: dict[fx.Node, fx.Node] = {}
        self.stacks: dict[fx.Node, tuple[Stack, int]] = {}
        self.done: set[fx.Node] = set()
        self.aliases: dict[fx.Node, list[fx.Node]] = {}  # new node → originals it computes
        self.fused = nn.Module()
        self.count = 0

    # -- override points -------------------------------------------------------------
    def equivalent(self, a: nn.Module, b: nn.Module) -> bool:
        """Same type, configuration, parameter shapes and mode: one op can run both.

        A module with hooks (a frozen stage's batch norm forced to running statistics)
        is never fused: its hooks would not run inside the fused op.
        """
        if type(a) is not type(b) or a.training != b.training or a.extra_repr() != b.extra_repr():
            return False
        if _hooked(a) or _hooked(b):
            return False
        sa, sb = a.state_dict(keep_vars=True), b.state_dict(keep_vars=True)
        return sa.keys() == sb.keys() and all(
            sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype for k in sa
        )

    def siblings(self, node: fx.Node) -> tuple[str, list[fx.Node], fx.Node] | None:
        """(mode, copies in slice order, what they read) when `node` starts a fusable run.

        What they read is the new graph's stacked node ("stacked") or the original node
        every copy reads ("broadcast").
        """
        module = self._module(node)
        if module is None or len(node.args) != 1 or node.kwargs:
            return None
        (arg,) = node.args
        if not isinstance(arg, fx.Node):
            return None
        if arg in self.stacks:
            stack, _ = self.stacks[arg]
            run = [self._copy_reading(m, module) for m in stack.members]
            if node in run and all(r is not None for r in run):
                return "stacked", run, stack.node
        # copies that read `arg` or an original node computing the same value (deduplicated)
        same = self.aliases.get(self.env.get(arg), [arg])
        run = [
            u for a in same for u in a.users if self._copy_reading(a, module, only=u) is not None
        ]
        if len(run) >= 2 and node in run:
            return "broadcast", sorted(run, key=self._order.__getitem__), arg
        return None

    def lower(self, mode: str, members: list[nn.Module]) -> Fused | None:
        """The fused op for `members` in `mode`, or None to leave them unfused."""
        rule = rule_for(members[0])
        if rule is None or not rule.accepts(members, mode) or not rule.pays(mode, self.device):
            return None
        return rule(members, mode)

    # -- the rewrite -------------------------------------------------------------------
    def run(self) -> fx.GraphModule:
        self._order = {n: i for i, n in enumerate(self.gm.graph.nodes)}
        self.live = _live(self.gm.graph)
        for node in self.gm.graph.nodes:
            if node in self.done:
                continue
            if not (self._fuse_run(node) or self._fuse_mix(node) or self._fuse_cat(node)):
                new = self.graph.node_copy(node, self.value)
                self.env[node] = new
        root = nn.Module()
        for name, child in self.gm.named_children():
            root.add_module(name, child)
        if self.count:
            root.add_module(FUSED_ROOT, self.fused)
        out = fx.GraphModule(root, self.graph, class_name=type(self.gm).__name__)
        # GraphModule copied only the modules the new graph calls; put back the original
        # tree, in its order, so names, parameter order and state dict are the unfused ones
        out._modules.clear()
        for name, child in root.named_children():
            out.add_module(name, child)
        out.meta.update(self.gm.meta)
        out.graph.lint()
        out.recompile()
        return out

    def value(self, node: fx.Node) -> fx.Node:
        """The new graph's node for original `node`, cutting a view out of its stack if needed."""
        if node in self.env:
            return self.env[node]
        stack, index = self.stacks[node]
        if index not in stack.views:
            if stack.chunks is None:
                stack.chunks = self.graph.call_function(
                    torch.chunk, (stack.node, len(stack.members), 1)
                )
                stack.chunks.meta["mtlc"] = dict(stack.node.meta.get("mtlc", {}))
            view = self.graph.call_function(operator.getitem, (stack.chunks, index))
            view.meta.update(node.meta)
            stack.views[index] = view
        return stack.views[index]

    def _module(self, node: fx.Node) -> nn.Module | None:
        # a copy whose value reaches no output stays as it is: fused, its weights would
        # get zero gradients instead of none, and an optimizer treats those differently
        if node.op != "call_module" or node in self.done or node not in self.live:
            return None
        return self.modules[node.target]

    def _copy_reading(
        self, source: fx.Node, like: nn.Module, only: fx.Node | None = None
    ) -> fx.Node | None:
        """The not yet fused user of `source` that calls a module equivalent to `like` on it alone."""
        for user in [only] if only is not None else list(source.users):
            module = self._module(user)
            reads_only_source = user.args == (source,) and not user.kwargs
            if module is not None and reads_only_source and self.equivalent(module, like):
                return user
        return None

    def _add(self, op: Fused, members: list[fx.Node], args: tuple) -> fx.Node:
        first = members[0].target.split(".")
        name = "_".join(p for p in first if p not in _owners(members)) or "op"
        while hasattr(self.fused, name):
            name = f"{name}_{self.count}"
        self.fused.add_module(name, op)
        self.count += 1
        node = self.graph.call_module(f"{FUSED_ROOT}.{name}", args)
        label = dict(members[0].meta.get("mtlc", {}))
        label.update(owner=None, fused=[m.name for m in members])
        node.meta["mtlc"] = label
        return node

    def _stack(self, node: fx.Node, members: list[fx.Node]) -> None:
        stack = Stack(node, members)
        for i, m in enumerate(members):
            self.stacks[m] = (stack, i)
            self.done.add(m)

    def _fuse_run(self, node: fx.Node) -> bool:
        found = self.siblings(node)
        if found is None:
            return False
        mode, run, source = found
        op = self.lower(mode, [self.modules[n.target] for n in run])
        if op is None:
            return False
        if mode == "broadcast":
            source = self.value(source)
            if op.pure:  # one call of the first copy serves every task
                new = self.graph.call_module(run[0].target, (source,))
                new.meta["mtlc"] = {**run[0].meta.get("mtlc", {}), "owner": None}
                for member in run:
                    self.env[member] = new
                    self.done.add(member)
                self.aliases[new] = run
                return True
        self._stack(self._add(op, run, (source,)), run)
        return True

    def _fuse_mix(self, node: fx.Node) -> bool:
        """A unit over exactly one stack's members, in order, returning one value per member."""
        module = self._module(node)
        if module is None or node.kwargs or len(node.args) < 2:
            return False
        stack = self._whole_stack(node.args)
        outs = [u for u in node.users if u.target is operator.getitem]
        index = {u.args[1]: u for u in outs}
        if stack is None or len(outs) != len(node.users) or sorted(index) != list(range(len(outs))):
            return False
        if len(index) != len(outs) or len(outs) != len(node.args):
            return False
        op = self.lower("mix", [module])
        if op is None:
            return False
        new = self._add(op, [node], (stack.node,))
        self.done.add(node)
        self._stack(new, [index[i] for i in range(len(outs))])
        return True

    def _fuse_cat(self, node: fx.Node) -> bool:
        """`torch.cat(members, dim=1)` of a whole stack in order is the stack itself."""
        if node.op != "call_function" or node.target is not torch.cat:
            return False
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
        if dim != 1 or not isinstance(node.args[0], (list, tuple)):
            return False
        stack = self._whole_stack(node.args[0])
        if stack is None:
            return False
        self.env[node] = stack.node
        return True

    def _whole_stack(self, args: tuple | list) -> Stack | None:
        first = args[0] if args else None
        if not isinstance(first, fx.Node) or first not in self.stacks or first in self.env:
            return None
        stack = self.stacks[first][0]
        return stack if list(args) == stack.members else None


def _hooked(module: nn.Module) -> bool:
    return any(
        getattr(m, name)
        for m in module.modules()
        for name in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        )
    )


def _live(graph: fx.Graph) -> set[fx.Node]:
    """Nodes some output depends on."""
    live: set[fx.Node] = set()
    todo = [n for n in graph.nodes if n.op == "output"]
    while todo:
        node = todo.pop()
        if node not in live:
            live.add(node)
            todo.extend(node.all_input_nodes)
    return live


def _owners(members: list[fx.Node]) -> set[str]:
    """Path parts that differ between the members' module names (the task names)."""
    parts = [str(m.target).split(".") for m in members]
    if len({len(p) for p in parts}) != 1:
        return set()
    return {p[i] for p in parts for i in range(len(p)) if len({q[i] for q in parts}) > 1}


def fuse(gm: fx.GraphModule, device: str = "cuda") -> fx.GraphModule:
    """`gm` with runs of per-task copies fused (a new GraphModule sharing `gm`'s modules)."""
    return ColumnFusion(gm, device).run()
