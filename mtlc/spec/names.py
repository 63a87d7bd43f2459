"""What a name in a spec may be: task, stage and input names become Python names.

A task called `seg` becomes the submodule `heads.seg`, a stage `s1` the submodule
`encoder.s1`, the input the argument of `forward`. So a name must be an identifier
(the whole string: `re.fullmatch`, because `$` would accept a trailing newline), not
a Python keyword (`class` cannot be an attribute in generated code), not an attribute
every `nn.Module` already has (`forward`, `type`, `training`: registering a submodule
there fails or shadows the method), not start with `_` (torch's private attributes)
and be short enough to sit inside a file name. This module imports no torch: the
reserved attributes are listed here and a test compares them with torch's.
"""

from __future__ import annotations

import keyword
import re

MAX_NAME = 64  # characters of a task, stage or input name (file systems allow 255 bytes)

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]*")

# public attributes of torch.nn.Module (torch 2.x); names here cannot be submodules
MODULE_ATTRIBUTES = frozenset(
    {
        "T_destination",
        "add_module",
        "apply",
        "bfloat16",
        "buffers",
        "call_super_init",
        "children",
        "compile",
        "cpu",
        "cuda",
        "double",
        "dump_patches",
        "eval",
        "extra_repr",
        "float",
        "forward",
        "get_buffer",
        "get_extra_state",
        "get_parameter",
        "get_submodule",
        "half",
        "ipu",
        "load_state_dict",
        "modules",
        "mtia",
        "named_buffers",
        "named_children",
        "named_modules",
        "named_parameters",
        "parameters",
        "register_backward_hook",
        "register_buffer",
        "register_forward_hook",
        "register_forward_pre_hook",
        "register_full_backward_hook",
        "register_full_backward_pre_hook",
        "register_load_state_dict_post_hook",
        "register_load_state_dict_pre_hook",
        "register_module",
        "register_parameter",
        "register_state_dict_post_hook",
        "register_state_dict_pre_hook",
        "requires_grad_",
        "set_extra_state",
        "set_submodule",
        "share_memory",
        "state_dict",
        "to",
        "to_empty",
        "train",
        "training",
        "type",
        "xpu",
        "zero_grad",
    }
)


def name_problem(name: object) -> str | None:
    """Why `name` cannot name a task, stage or input; None when it can."""
    if not isinstance(name, str):
        return f"must be a string, got {name!r}"
    if len(name) > MAX_NAME:
        return f"is {len(name)} characters long; at most {MAX_NAME}"
    if not _IDENT.fullmatch(name):
        return "must be an identifier: a letter, then letters, digits or _"
    if keyword.iskeyword(name):
        return "is a Python keyword; it would not work as an attribute of the model"
    if name in MODULE_ATTRIBUTES:
        return "is an attribute of every torch module (it would shadow it); pick another name"
    return None
