"""`python -m mtlc`: the mtlc command (what torchrun runs in each process: `-m mtlc`)."""

from mtlc.cli import main

if __name__ == "__main__":
    main()
