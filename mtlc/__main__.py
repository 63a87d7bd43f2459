"""`python -m mtlc`: the mtlc command (what torchrun runs in each process: `-m mtlc`).

A process of a torchrun job (``RANK`` and ``WORLD_SIZE`` in its environment) ends through
:func:`mtlc.clitools.exit_without_teardown`: the interpreter's teardown of
torch.distributed can abort a rank whose run succeeded.
"""

import os

from mtlc.cli import main
from mtlc.clitools import exit_without_teardown

if __name__ == "__main__":
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # distributed.launched()
        exit_without_teardown(main)
    main()
