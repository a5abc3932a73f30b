"""The mixed-precision commands of the ``ptqsam`` command line: ``sensitivity``, ``allocate``,
``accuracy-control`` and ``pareto`` (registered with :func:`ptqsam.cli.main` when it is imported).
They follow :mod:`ptqsam.cli`'s rules: one clear line on bad input, checks before any work, the
result printed before it is written."""

from __future__ import annotations

from pathlib import Path

import click

from ptqsam.cli import (_calibration_inputs, _config, _reconstruction, _with_flags, data_options, main, model_options,
                        quant_options)
from ptqsam.constants import CONTROL_DEFAULTS, DEVICES, MODEL_TYPES, PARETO_DEFAULTS
from ptqsam.errors import PtqsamError


@main.command()
@model_options
@data_options
@quant_options
@click.option("--granularity", type=click.Choice(("site", "unit", "block")), default="unit", show_default=True,
              help="Groups: each site, each product (a layer's weight + input, an attention's operands), each block.")
@click.option("--split-roles", is_flag=True,
              help="Measure each group's weights and activations apart (what `allocate` needs for separate W/A bits).")
@click.option("--leave-float", is_flag=True,
              help="Quantize every group but one (default: quantize only one group, the rest float).")
@click.option("--metric", type=click.Choice(("mse", "iou_loss", "iou_error")), default="mse", show_default=True,
              help="What ranks the groups in the CSV, the printout and the figures.")
@click.option("--top", type=int, default=20, show_default=True, help="Groups in the ranking figure.")
@click.option("--out", type=click.Path(file_okay=False), default="results/sensitivity", show_default=True)
def sensitivity(model_type, checkpoint, device, images, annotations, detections, prompt, seed, recipe, bits,
                calib_images, search_rows, float_encoder, granularity, split_roles, leave_float, metric, top,
                out, **recon_options) -> None:
    """Which groups of sites hurt most when quantized, measured on calibration images against the
    float model (--bits takes a comma list: one calibration per bit-width)."""
    from ptqsam.analysis.sensitivity import sensitivity_study
    from ptqsam.bits import parse_bits_list
    from ptqsam.data.selection import data_fingerprint
    from ptqsam.models.blocks import ENCODER_SITES
    from ptqsam.models.zoo import weights_id
    from ptqsam.plots.precision import plot_sensitivity_result
    from ptqsam.preflight import check_output_folder

    if (images is None) != (annotations is None):
        raise PtqsamError("--images and --annotations go together: give both or neither")
    if top < 1:
        raise PtqsamError(f"--top must be >= 1, got {top}")
    bit_list = parse_bits_list(bits)
    if not bit_list:
        raise PtqsamError("--bits needs at least one bit-width, e.g. W4A4 or W4A4,W8A8")
    check_output_folder(out, "--out")
    config, model, recipe, dataset, samples = _calibration_inputs(model_type, checkpoint, device, images, annotations,
                                                                  prompt, seed, recipe, calib_images, search_rows,
                                                                  detections)
    result = sensitivity_study(model, recipe, bit_list, samples, granularity,
                               ("weight", "activation") if split_roles else ("all",),
                               "all_but" if leave_float else "only", (ENCODER_SITES,) if float_encoder else (),
                               search_rows, _reconstruction(**recon_options))
    result.settings.update(model=model_type, checkpoint=checkpoint, weights=weights_id(model_type, checkpoint, seed),
                           data=data_fingerprint(dataset, [s.image_id for s in samples]), config=config.to_dict())
    first = result.settings["roles"][0]
    ranked = sorted(result.scores(metric, first).items(), key=lambda item: -item[1])
    click.echo(f"{len(result.groups)} groups, {result.passes} forward passes, seconds {result.seconds}, "
               f"CPU seconds {result.cpu_seconds}")
    click.echo(f"most sensitive ({metric}, {first} sites, {result.settings['bits'][0]}):")
    for name, score in ranked[:10]:
        click.echo(f"  {score:12.6g}  {name}")
    written = result.write(out, metric) + plot_sensitivity_result(result, out, metric, top)
    click.echo("written: " + ", ".join(str(path) for path in written if path.suffix != ".pdf"))


@main.command()
@click.argument("study", type=click.Path(exists=True))
@click.option("--budget", "budgets", multiple=True, required=True,
              help="W5A5 (average weight and activation bits), or KIND=VALUE with KIND one of weight_bits, "
                   "activation_bits, size_mb, gbops and VALUE a number or a bits label (its uniform cost). Repeatable.")
@click.option("--metric", type=click.Choice(("mse", "iou_loss", "iou_error")), default="mse", show_default=True)
@click.option("--candidates", default=None, help="Bit-widths to choose from, e.g. 4,6,8 (default: every measured one).")
@click.option("--name", default=None, help="Recipe name (default: <recipe>-mixed-<budgets>).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Recipe YAML to write.")
def allocate(study, budgets, metric, candidates, name, out) -> None:
    """Bits per group from a sensitivity study (`ptqsam sensitivity`) minimising the summed
    sensitivity under budgets; writes a recipe YAML the recipe system runs as is."""
    from ptqsam.analysis.sensitivity import load_sensitivity
    from ptqsam.io import json_text
    from ptqsam.mixed_precision.recipes import write_recipe
    from ptqsam.mixed_precision.workflow import allocate_study, study_model
    from ptqsam.preflight import check_output_file

    check_output_file(out, "--out")
    bits = None if candidates is None else [_positive_int(text, "--candidates") for text in candidates.split(",")]
    result = load_sensitivity(study)
    allocation, recipe, comments = allocate_study(result, study_model(result), budgets, metric, name, bits)
    click.echo(json_text({"recipe": out, **allocation.summary()}), nl=False)
    write_recipe(out, recipe, comments)


def _positive_int(text: str, option: str) -> int:
    if not text.strip().isdigit():
        raise PtqsamError(f"{option} takes a comma list of bit-widths, got {text!r}")
    return int(text)


@main.command("accuracy-control")
@click.argument("study", type=click.Path(exists=True))
@click.option("--target", type=float, required=True, help="Tolerated mIoU loss against float, e.g. 0.01.")
@click.option("--start", default="W4A4", show_default=True, help="Uniform bit-width every group starts at.")
@click.option("--raise-to", default="W8A8", show_default=True, help="Bit-width of a raised group, or 'float'.")
@click.option("--control-images", type=int, default=16, show_default=True,
              help="Held-out images (drawn by --seed from the evaluated set) that decide each step; the others verify.")
@click.option("--max-steps", type=int, default=None, help="Raise at most this many groups.")
@click.option("--metric", type=click.Choice(("mse", "iou_loss", "iou_error")), default="mse", show_default=True)
@click.option("--images", type=click.Path(file_okay=False), default=None,
              help="COCO-format image folder evaluated (default: a generated set of --synthetic-images).")
@click.option("--annotations", type=click.Path(dir_okay=False), default=None)
@click.option("--synthetic-images", type=int, default=CONTROL_DEFAULTS["synthetic_images"], show_default=True)
@click.option("--out", type=click.Path(file_okay=False), default=CONTROL_DEFAULTS["out"], show_default=True)
def accuracy_control(study, target, start, raise_to, control_images, max_steps, metric, images, annotations,
                     synthetic_images, out) -> None:
    """From uniform --start, raise the most sensitive groups of a study one by one until the mIoU
    loss on held-out images is within --target; writes the recipe and the trajectory. The study's
    seed draws the control images (as it drew the calibration images)."""
    from ptqsam.analysis.sensitivity import load_sensitivity
    from ptqsam.io import json_text
    from ptqsam.mixed_precision.workflow import check_control, control_bits, control_study, study_model, write_control
    from ptqsam.preflight import check_output_folder

    try:
        check_control(target, control_images, max_steps)
    except PtqsamError as error:
        raise _with_flags(error, {key: key for key in ("target", "control_images", "max_steps")}) from None
    low, high = control_bits(start, raise_to)
    check_output_folder(out, "--out")
    result = load_sensitivity(study)
    config = _config(**{**result.settings["config"], "images": images, "annotations": annotations,
                        "synthetic_images": synthetic_images, "out": out})
    summary, recipe, comments = control_study(result, study_model(result, config.device), config, low, high, target,
                                              control_images, max_steps, metric, Path(out) / "recipe.yaml")
    click.echo(json_text(summary), nl=False)
    write_control(out, summary, recipe, comments)


@main.command()
@data_options(detections=False)
@click.option("--model", "model_type", type=click.Choice(MODEL_TYPES), default="testbed", show_default=True)
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None)
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--recipe", default="ptq4sam", show_default=True, help="Base recipe of the uniform rows.")
@click.option("--bits", default="W4A4,W6A6,W8A8", show_default=True, help="Uniform bit-widths.")
@click.option("--mixed", "mixed", multiple=True, type=click.Path(dir_okay=False, exists=True),
              help="A recipe YAML with explicit bits (from `allocate` or `accuracy-control`). Repeatable.")
@click.option("--calib-images", type=int, default=PARETO_DEFAULTS["calib_images"], show_default=True)
@click.option("--synthetic-images", type=int, default=PARETO_DEFAULTS["synthetic_images"], show_default=True)
@click.option("--search-rows", type=int, default=None)
@click.option("--out", type=click.Path(file_okay=False), default=PARETO_DEFAULTS["out"], show_default=True)
def pareto(images, annotations, prompt, seed, model_type, checkpoint, device, recipe, bits, mixed,
           calib_images, synthetic_images, search_rows, out) -> None:
    """Size, BOPs and mIoU of uniform bit-widths and mixed-precision recipes, each calibrated and
    evaluated on the same images (generated by default: the demo's images and calibration set) with
    ground-truth prompts (mask AP with detector boxes: `ptqsam evaluate --detections`)."""
    from ptqsam.bits import parse_bits_list
    from ptqsam.mixed_precision.pareto import pareto_markdown
    from ptqsam.mixed_precision.workflow import pareto_run, write_pareto_study
    from ptqsam.preflight import check_output_folder, check_recipes

    uniform = parse_bits_list(bits)
    if not uniform and not mixed:
        raise PtqsamError("nothing to compare: give --bits or --mixed")
    check_output_folder(out, "--out")
    config = _config(models=[model_type], images=images, annotations=annotations, prompt=prompt, seed=seed,
                     calib_images=calib_images, synthetic_images=synthetic_images, search_rows=search_rows,
                     device=device, out=out)
    check_recipes([recipe, *mixed], [model_type])
    rows, settings = pareto_run(config, recipe, uniform, list(mixed), checkpoint)
    click.echo(pareto_markdown(rows))
    write_pareto_study(rows, settings, Path(out))
