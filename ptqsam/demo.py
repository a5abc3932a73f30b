"""The demo: its sweep config and figures (``ptqsam demo`` and :func:`ptqsam.run_demo`), what its
bimodal fold did, and its published copy (a committed ``docs/demo/<name>.json``, the figures in
``docs/figures/`` and the README table generated from that file, so published numbers cannot go
stale)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ptqsam.errors import PtqsamError
from ptqsam.evaluation.report import markdown_table
from ptqsam.io import write_text_atomic

if TYPE_CHECKING:
    from ptqsam.config import ExperimentConfig

DEMO_RECIPES = ("minmax", "ptq4vit", "ptq4sam")
DEMO_BITS = ("W8A8", "W6A6", "W4A4")
#: calibration sets each demo cell is calibrated on (the report gives their spread)
DEMO_CALIB_SETS = 3
#: calibration images of each set
DEMO_CALIB_IMAGES = 4
#: the protocol float list of the demo: every recipe quantizes the sites PTQ4SAM quantizes
DEMO_FLOAT_SITES = "ptq4sam"
#: the demo's reconstruction row: at the lowest bit-width only, with few iterations per unit (PTQ4SAM-L
#: runs 20,000 on 32 images; the demo's 4 calibration images over-fit more iterations: README)
DEMO_RECON_RECIPE, DEMO_RECON_ITERATIONS = "ptq4sam-l", 100
#: rows of each Hessian unit's cache that score its candidates in the demo (the full cache takes ~7x longer)
DEMO_SEARCH_ROWS = 64
#: generated images the demo evaluates
DEMO_IMAGES = 24
#: worker processes of the demo's quantized cells (one torch thread each: the numbers do not depend
#: on the machine's thread count)
DEMO_WORKERS = 2
#: the demo's per-site figures: a decoder post-softmax site in the lowest-bit cell of this recipe
DEMO_SITE, DEMO_SITE_RECIPE = "mask_decoder.transformer.layers.0.cross_attn_token_to_image.probs", "ptq4sam"

#: where published reports go, relative to the repository root
REPORTS = Path("docs/demo")
#: the name of the demo's own published report (``docs/demo/report.json``)
DEMO_REPORT = "report"
#: where the demo's figures are published, relative to the repository root
FIGURES = Path("docs/figures")


def demo_config(
    out: str = "results/demo", images: int = DEMO_IMAGES, calib_images: int = DEMO_CALIB_IMAGES,
    calib_sets: int = DEMO_CALIB_SETS, float_sites: str = DEMO_FLOAT_SITES, search_rows: int = DEMO_SEARCH_ROWS,
    recipes: Sequence[str] = DEMO_RECIPES, bits: Sequence[str] = DEMO_BITS, recon_recipe: str = DEMO_RECON_RECIPE,
    recon_iterations: int = DEMO_RECON_ITERATIONS, seed: int = 0, device: str = "cpu", workers: int | None = None,
) -> "ExperimentConfig":
    """The demo's sweep: the testbed on ``images`` generated images, float and every recipe at
    every bit-width, each cell calibrated on ``calib_sets`` generated sets of ``calib_images``,
    every recipe quantizing the float list of ``float_sites`` (``"own"``: each recipe's own);
    ``recon_recipe`` (``""``: none) runs at the lowest bit-width only. ``workers`` None: the demo's
    2 worker processes (1 under torchrun, whose processes share each cell's images)."""
    from ptqsam.bits import bits_order
    from ptqsam.config import ExperimentConfig
    from ptqsam.distributed import launched

    recon = {recon_recipe: [bits_order(bits)[0]]} if recon_recipe else {}
    if workers is None:
        workers = 1 if launched() else DEMO_WORKERS
    return ExperimentConfig(
        models=("testbed",), recipes=(*recipes, *recon), bits=tuple(bits), recipe_bits=recon,
        reconstruction={"iterations": recon_iterations}, synthetic_images=images, calib_images=calib_images,
        calib_sets=calib_sets, search_rows=search_rows, seed=seed, device=device, out=out,
        float_sites=None if float_sites == "own" else float_sites, own_float_variants=False, workers=workers)


def demo_figures(config: "ExperimentConfig") -> list[Path]:
    """The figures of a finished demo under ``out/plots``: the degradation curves and, when the
    demo ran :data:`DEMO_SITE_RECIPE`, its lowest-bit cell's :data:`DEMO_SITE` histogram and per-site
    quantization error."""
    from ptqsam.plots import bit_width_order, plot_report
    from ptqsam.plots.cell import plot_cell_sites
    from ptqsam.sweep import Cell

    out = Path(config.out)
    figures = list(plot_report(out / "report.json", out / "plots"))
    if DEMO_SITE_RECIPE in config.recipes:
        cell = Cell("testbed", DEMO_SITE_RECIPE, bit_width_order(config.bits)[0])
        figures += [path for path in plot_cell_sites(config, cell, DEMO_SITE) if path.name.startswith("site_")]
    return figures


def report_path(name: str) -> Path:
    """The published report ``name``, relative to the repository root."""
    return REPORTS / f"{name}.json"


def table_marks(name: str) -> tuple[str, str]:
    """The README comments around the table generated from the published report ``name``."""
    return (f"<!-- table generated from {report_path(name).as_posix()} by `ptqsam demo --publish`; do not edit -->",
            f"<!-- end of the table of {report_path(name).as_posix()} -->")


def bimodal_note(records: Iterable[Mapping[str, Any]]) -> str | None:
    """One line saying how often the bimodal fold (BIG) found bimodal keys in the calibrations of
    the cell records, or None when no recipe had the fold."""
    checks = [entry["bimodal"] for record in records for run in record.get("runs", [])
              for entry in run["calibration"].get("bimodal", {}).values()]
    if not checks:
        return None
    found = sum(checks)
    if found:
        return f"bimodal fold (BIG): {found} of {len(checks)} checked token→image key projections were bimodal and folded"
    return (f"bimodal fold (BIG): none of the {len(checks)} checked token→image key projections was bimodal, so the "
            "fold never triggered: the testbed's keys are unimodal and BIG is not exercised by this demo")


def cell_records(results: str | Path) -> list[dict[str, Any]]:
    """The cell files of a sweep's results folder."""
    return [json.loads(path.read_text()) for path in sorted(Path(results).glob("cells/*.json"))]


def readme_table(report: str | Path) -> str:
    """The README table of a published report: the markdown table of its rows."""
    return markdown_table(json.loads(Path(report).read_text())["rows"])


def readme_block(readme_text: str, name: str = DEMO_REPORT) -> str:
    """The table generated from the published report ``name`` in the README text."""
    start, end = table_marks(name)
    first, last = readme_text.find(start), readme_text.find(end)
    if first < 0 or last < first:
        raise PtqsamError(f"the README has no table between {start!r} and {end!r}")
    return readme_text[first + len(start):last].strip("\n") + "\n"


def publish(results: str | Path, root: str | Path, figures: Iterable[str], name: str = DEMO_REPORT) -> list[Path]:
    """Copy a demo's ``report.json`` to ``root/docs/demo/<name>.json`` and its ``figures`` (file
    names under ``results/plots``) to ``root/docs/figures/``, then regenerate the README's table of
    that report from the copy."""
    results, root = Path(results), Path(root)
    readme = root / "README.md"
    text = readme.read_text()
    readme_block(text, name)  # fail before copying anything when the marks are missing
    written = []
    for source, target in [(results / "report.json", root / report_path(name)),
                           *[(results / "plots" / figure, root / FIGURES / figure) for figure in figures]]:
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        written.append(target)
    start, end = table_marks(name)
    first, last = text.index(start) + len(start), text.index(end)
    write_text_atomic(readme, text[:first] + "\n" + readme_table(root / report_path(name)) + text[last:])
    return [*written, readme]
