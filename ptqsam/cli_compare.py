"""``ptqsam compare``: several results folders in one table and one figure (registered with
:func:`ptqsam.cli.main` when it is imported; :mod:`ptqsam.cli`'s rules hold)."""

from __future__ import annotations

from pathlib import Path

import click

from ptqsam.cli import _show_report, latex_option, main


@main.command()
@click.argument("results", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default="results/compare", show_default=True,
              help="Folder of compare.{md,csv,json,png,pdf}.")
@latex_option
def compare(results: tuple[str, ...], out: str, latex: str | None) -> None:
    """Several results folders (sweeps, or folders of `evaluate --out` records) in one table and one
    figure, with the settings that differ between them."""
    from ptqsam.compare import RESULTS_COLUMN, compare_results, differences_text, write_comparison
    from ptqsam.preflight import check_output_file, check_output_folder

    check_output_folder(out, "--out")
    if latex:
        check_output_file(latex, "--latex")
    comparison = compare_results(results)
    click.echo(differences_text(comparison))
    _show_report(comparison.rows, Path(out) / "compare.md", latex, RESULTS_COLUMN)
    written = write_comparison(comparison, out)
    click.echo("results: " + ", ".join(str(path) for path in written.values()))
