"""The ``ptqsam`` command line (a thin layer over the library)."""

from __future__ import annotations

import click

from ptqsam import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ptqsam")
def main() -> None:
    """Post-training quantization experiments on SAM, TinySAM and MobileSAM."""


if __name__ == "__main__":
    main()
