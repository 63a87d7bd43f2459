"""Per-task initialisation of multi-column stages, and frozen stages.

Cross-stitch and NDDR networks start each task's column from a network trained on that
task alone (Misra et al. 2016, Gao et al. 2019). `encoder.init: {seg: run/best.pt}`
does that: the run must be of this spec (same input, same backbone, the same layers in
each stage it initialises; the single-task baselines of `mtlc train --baselines` are),
and its copy of each stage that serves the task is copied into this spec's column of
that task in every `separate`, `cross_stitch` and `nddr` stage. Shared stages, sharing
units and heads keep their own initialisation.

`encoder.freeze: [s1]` fixes a stage's blocks: no gradient (so no optimiser step and no
share of MGDA's gradients), and their batch norms normalise with the running statistics
in training too, so the stage computes the same function throughout.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import fx, nn

from mtlc.compiler.emitter import module_prefix
from mtlc.spec.load import spec_error
from mtlc.topology import Topology

_SHOWN = 4


def _few(keys: list[str]) -> str:
    more = f", … ({len(keys)} in all)" if len(keys) > _SHOWN else ""
    return ", ".join(keys[:_SHOWN]) + more


def _under(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {k[len(prefix) + 1 :]: v for k, v in state.items() if k.startswith(prefix + ".")}


def _block_of(topo: Topology, stage: str, task: str) -> str | None:
    for n, a in topo.graph.nodes(data=True):
        if a["kind"] == "block" and a["stage"] == stage and task in a["tasks"]:
            return n
    return None


def load_task_inits(model: fx.GraphModule, topo: Topology) -> None:
    """Copy each `encoder.init` run's columns into this model (module docstring)."""
    spec = topo.spec
    if not spec.encoder.init:
        return
    from mtlc.checkpoint import CheckpointError, load_checkpoint
    from mtlc.spec import load_spec
    from mtlc.topology import build_topology

    columns = [s for s in topo.stages if spec.sharing_of(s).layout == "per_task"]
    if not columns:
        raise spec_error(
            spec,
            ("encoder", "init"),
            "init starts the per-task columns of separate, cross_stitch or nddr stages; this spec has none",
        )
    ours = model.state_dict()
    for task, path in spec.encoder.init.items():
        where = ("encoder", "init", task)
        try:
            state = load_checkpoint(path, ("spec", "model"))
            run = load_spec(state["spec"])
            run_topo = build_topology(run)
        except CheckpointError as exc:
            raise spec_error(spec, where, str(exc)) from None
        except Exception as exc:  # a spec this mtlc cannot read back: not a run of this spec
            raise spec_error(spec, where, f"{path}: its spec cannot be read ({exc})") from None
        differs = _differs(spec, run, topo, run_topo, columns, task)
        if differs:
            raise spec_error(
                spec, where, f"{path} is a run of spec '{run.name}', not of this one: {differs}"
            )
        plan: list[tuple[str, torch.Tensor]] = []
        for stage in columns:
            mine = module_prefix(f"{stage}/{task}", topo.graph.nodes[f"{stage}/{task}"])
            block = _block_of(run_topo, stage, task)
            theirs = _under(state["model"], module_prefix(block, run_topo.graph.nodes[block]))
            want = _under(ours, mine)
            missing = [k for k in want if k not in theirs]
            wrong = [k for k in want if k in theirs and theirs[k].shape != want[k].shape]
            if missing or wrong:
                what = f"missing {_few(missing)}" if missing else f"shapes differ: {_few(wrong)}"
                raise spec_error(
                    spec, where, f"{path} does not fit stage '{stage}' of task '{task}' ({what})"
                )
            plan += [(f"{mine}.{k}", theirs[k]) for k in want]
        with torch.no_grad():
            for key, value in plan:
                ours[key].copy_(value)


def _differs(spec, run, topo: Topology, run_topo: Topology, stages: list[str], task: str) -> str:
    """Why the run is not of this spec ('' when it is)."""
    if task not in run.tasks:
        return f"it has no task '{task}'"
    if run.input_shape != spec.input_shape:
        return f"its input is {list(run.input_shape)}, this spec's {list(spec.input_shape)}"
    for stage in stages:
        block = _block_of(run_topo, stage, task)
        if block is None:
            return f"it has no stage '{stage}'"
        a = [str(x) for x in run_topo.graph.nodes[block]["layers"]]
        b = [str(x) for x in topo.graph.nodes[f"{stage}/{task}"]["layers"]]
        if a != b:
            return f"its stage '{stage}' has other layers"
    return ""


def _running_stats_only(module: nn.Module, args: Any) -> None:
    """Forward pre-hook of a frozen stage's batch norm: always use the running statistics."""
    module.training = False


def freeze_stages(model: fx.GraphModule, topo: Topology) -> None:
    """Fix the blocks of every stage in `encoder.freeze` (module docstring)."""
    frozen = set(topo.spec.encoder.freeze)
    for block, attrs in topo.graph.nodes(data=True):
        if attrs["kind"] != "block" or attrs["stage"] not in frozen:
            continue
        module = model.get_submodule(module_prefix(block, attrs))
        for p in module.parameters():
            p.requires_grad_(False)
        for m in module.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.register_forward_pre_hook(_running_stats_only)
