"""``python -m ptqsam`` (and ``torchrun --nproc_per_node=N -m ptqsam ...``): the command line."""

from ptqsam.cli import main

if __name__ == "__main__":
    main(prog_name="ptqsam")
