"""Setting a run up: its data splits, losses, balancer and optimizer, each checked first.

Everything here turns a spec into one piece the trainer owns, and turns a mismatch
between the spec and what it names (a data set without the input, a head that does not
fit its target, a bad balancer option) into a located error before anything is written.
The learning-rate rules: modules with an ``lr_mult`` attribute (cross-stitch and NDDR
units) get their own parameter group at ``lr × lr_mult``; the cosine schedule multiplies
every group's own base rate, so it keeps the multiplier (the survey's code lost it to
its schedule). The balancer's learned parameters (uncertainty's s_t) train at the base
rate without weight decay.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import torch
from torch import nn

from mtlc import registry
from mtlc.spec import Spec, spec_error
from mtlc.train.errors import TrainError


def load_model_state(model: nn.Module, state: dict[str, Any], where: str) -> None:
    """Load a state dict, or say in one line how it differs from the model."""
    own = model.state_dict()
    problems = []
    for what, keys in (
        ("missing", [k for k in own if k not in state]),
        ("unexpected", [k for k in state if k not in own]),
        ("of another shape", [k for k in own if k in state and own[k].shape != state[k].shape]),
    ):
        if keys:
            problems.append(f"{len(keys)} {what} (e.g. {keys[0]})")
    if problems:
        raise TrainError(f"{where} does not fit this spec's model: {'; '.join(problems)} entries")
    model.load_state_dict(state)


def task_kinds(spec: Spec) -> dict[str, str]:
    """classification | regression per task, from its loss (Kendall's c_t, DTP)."""
    return {
        t: "classification" if task.loss_name in registry.CLASSIFICATION_LOSSES else "regression"
        for t, task in spec.tasks.items()
    }


def loss_functions(spec: Spec) -> dict[str, Any]:
    """task -> ``f(pred, target)`` with the spec's loss options bound."""
    return {
        t: functools.partial(registry.resolve(registry.LOSSES, task.loss_name), **task.loss_options)
        for t, task in spec.tasks.items()
    }


def build_optimizer(
    spec: Spec, model: nn.Module, extra: list[nn.Parameter]
) -> torch.optim.Optimizer:
    """The spec's optimizer over the model (lr_mult groups) and the balancer's parameters."""
    opt = spec.train.optimizer
    by_mult: dict[float, list[nn.Parameter]] = {}
    grouped: set[int] = set()
    for module in model.modules():
        mult = getattr(module, "lr_mult", None)
        if mult is None or mult == 1.0:
            continue
        for p in module.parameters():
            if id(p) not in grouped and p.requires_grad:
                grouped.add(id(p))
                by_mult.setdefault(float(mult), []).append(p)
    # frozen stages (`encoder.freeze`) have requires_grad False: not optimised at all
    base = [p for p in model.parameters() if id(p) not in grouped and p.requires_grad]
    groups: list[dict[str, Any]] = [{"params": base}]
    groups += [{"params": ps, "lr": opt.lr * m} for m, ps in by_mult.items()]
    if extra:
        groups.append({"params": extra, "weight_decay": 0.0})
    groups = [g for g in groups if g["params"]]
    if opt.type == "sgd":
        return torch.optim.SGD(
            groups, lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
    cls = torch.optim.AdamW if opt.type == "adamw" else torch.optim.Adam
    return cls(groups, lr=opt.lr, weight_decay=opt.weight_decay)


def cosine_schedule(total: int) -> Any:
    """LambdaLR factor: half a cosine from 1 to 0 over ``total`` steps."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total) / max(total, 1)))


_DATA_OPTION = re.compile(r"train\.data\.([A-Za-z_]\w*): (.*)", re.S)


def located_data_error(spec: Spec, message: str) -> TrainError:
    """A data set's error at its option's place in the spec file, when it names one.

    A data set checks its own options when it loads (the spec's schema cannot know every
    data set's), and names the option ``train.data.<key>: …`` (mtlc.data.option_path);
    the key is then found in the file like any other spec error's: an unknown option at
    its key, a bad value at the value. Other data errors (a file's own line) stay as
    they are. Still a TrainError: whoever can do without the data (``viz``'s gate
    weights) catches that.
    """
    found = _DATA_OPTION.fullmatch(message)
    if found is None:
        return TrainError(message)
    key, rest = found.groups()
    located = spec_error(spec, ("train", "data", key), rest, key="unknown option" in rest)
    return TrainError(str(located))


def load_split(spec: Spec, split: str, allow_import: frozenset[str]):
    """One split of the spec's data, checked against the spec's input and task targets."""
    from mtlc.data import DataError, load_dataset

    data_spec = spec.train.data
    options = {"name": data_spec.name, **data_spec.options}
    try:
        data = load_dataset(options, split, allow_import=allow_import)
    except DataError as exc:
        raise located_data_error(spec, str(exc)) from None
    keys = data.keys()
    if spec.input_name not in keys:
        raise spec_error(
            spec,
            ("input", spec.input_name),
            f"data set '{data_spec.name}' has no entry '{spec.input_name}' (it has: {', '.join(keys)})",
            key=True,
        )
    if len(data) == 0:
        raise TrainError(f"data set '{data_spec.name}' has no samples in its {split} split")
    x = data[spec.input_name]
    if x.dtype != torch.float32:
        raise spec_error(
            spec,
            ("input", spec.input_name),
            f"data set '{data_spec.name}' gives '{spec.input_name}' as {x.dtype}, but the "
            "model computes in float32: convert it (e.g. tensor.float())",
        )
    got = tuple(x.shape[1:])
    if got != spec.input_shape:
        raise spec_error(
            spec,
            ("input", spec.input_name),
            f"the spec says {list(spec.input_shape)} but data set '{data_spec.name}' gives "
            f"{list(got)} (set both, e.g. --set input.{spec.input_name}={list(got)})",
        )
    for t, task in spec.tasks.items():
        target = task.target or t
        if target not in keys:
            raise spec_error(
                spec,
                ("tasks", t, "target") if task.target else ("tasks", t),
                f"task '{t}' reads batch entry '{target}', which data set '{data_spec.name}' "
                f"does not have (it has: {', '.join(keys)}); set tasks.{t}.target",
                key=task.target is None,
            )
    return data


def run_balancer(spec: Spec, topology: Any) -> Any:
    """The spec's balancer for these tasks; a bad option is a SpecError at its key.

    Used by the trainer and by ``mtlc sweep`` to check every grid point before the
    first one trains (the schema cannot know, e.g., that weights must be ≥ 0).
    """
    from mtlc.balancers import BalancerError, build_balancer

    options = spec.balancer.model_dump()
    try:
        balancer = build_balancer(options, topology.tasks, task_kinds(spec))
    except BalancerError as exc:
        raise spec_error(spec, ("balancer", *exc.path), str(exc)) from None
    if balancer.needs_shared_repr and topology.shared_repr is None:
        key = "mode" if "mode" in options else "wrt"
        exact = "mode: exact" if key == "mode" else "wrt: parameters"
        raise spec_error(
            spec,
            ("balancer", key),
            f"{options['type']} {key} '{options[key]}' needs one shared representation that"
            " every task reads, but this spec's tasks leave the encoder with separate"
            f" features; use {exact}",
        )
    return balancer


@torch.no_grad()
def per_sample_batchnorm(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """The BatchNorm layers that see one value per channel per sample (1-D features).

    In training, such a layer normalises over the batch alone, and a batch of one sample
    has no variance: torch refuses it. One forward of one sample in eval mode (no
    statistics updated, no random numbers drawn) finds them.
    """
    found: list[str] = []
    hooks = [
        module.register_forward_pre_hook(
            lambda m, args, name=name: (
                found.append(name)
                if args[0].dim() >= 2 and args[0][0].numel() == args[0].shape[1]
                else None
            )
        )
        for name, module in model.named_modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm)
    ]
    was_training = model.training
    model.eval()
    try:
        model(sample[:1])
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return found


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@torch.no_grad()
def check_targets(
    spec: Spec,
    model: nn.Module,
    data: Any,
    *,
    pred_keys: list[str],
    targets: dict[str, str],
    losses: dict[str, Any],
    device: torch.device,
) -> None:
    """Every supervised prediction against its batch entry, before anything is written.

    One forward of two samples (eval mode: no statistics or random numbers used) goes
    through each task's own loss and metrics, so a head with the wrong number of
    channels or resolution is a located error instead of a traceback at step 1; the
    class ids of a cross-entropy task are checked over the whole split (an id beyond
    the logits would otherwise stop the run mid-epoch, or crash a CUDA kernel).
    """
    from mtlc.metrics import build_metric

    name = spec.train.data.name
    sample = to_device({k: v[:2] for k, v in data.tensors.items()}, device)
    model.eval()
    out = model(sample[spec.input_name])
    for key in pred_keys:
        t = key.split(":")[0]
        task, pred, entry = spec.tasks[t], out[key], targets[t]
        target = sample[entry]
        try:
            losses[t](pred, target)
            for m in task.metrics if key == t else ():
                build_metric(m).update(pred, target)
        except (ValueError, IndexError, RuntimeError) as exc:
            raise spec_error(
                spec,
                ("tasks", t, "head"),
                f"'{key}' predicts {list(pred.shape[1:])} per sample, which does not fit "
                f"batch entry '{entry}' of data set '{name}' ({list(target.shape[1:])}, "
                f"{target.dtype}): {first_line(exc)}",
            ) from None
        if task.loss_name == "cross_entropy":
            ids = data[entry]
            ignore = task.loss_options.get("ignore_index", -1)
            bad = ids[(ids != ignore) & ((ids < 0) | (ids >= pred.shape[1]))]
            if bad.numel():
                raise spec_error(
                    spec,
                    ("tasks", t, "head"),
                    f"'{key}' predicts {pred.shape[1]} classes, but batch entry '{entry}' "
                    f"of data set '{name}' holds class id {int(bad[0])} (ids must lie in "
                    f"[0, {pred.shape[1] - 1}], or be the ignore index {ignore})",
                )


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch on ``device`` (the CPU keeps the tensors as they are)."""
    if device.type == "cpu":
        return batch
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


# the data sets mtlc ships (their splits are plain tensors built in memory)
BUILT_IN_DATA = frozenset({"shapes", "correlated", "nyuv2", "cityscapes"})


def fits_on_device(nbytes: int, free: int, share: float = 0.25) -> bool:
    """Whether a split of `nbytes` may live on a device with `free` bytes (a quarter of it)."""
    return nbytes <= share * free


def keep_on_device(data: Any, device: torch.device) -> bool:
    """Move a split's tensors to the GPU when they fit, so batches need no host copy.

    A split takes at most a quarter of the free device memory, leaving the rest to the
    model and activations; otherwise (and on the CPU) batches are copied per step.
    """
    if device.type != "cuda":
        return False
    nbytes = sum(v.numel() * v.element_size() for v in data.tensors.values())
    free, _ = torch.cuda.mem_get_info(device)
    if not fits_on_device(nbytes, free):
        return False
    data.tensors = {k: v.to(device) for k, v in data.tensors.items()}
    return True
