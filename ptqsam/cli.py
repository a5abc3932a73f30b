"""The ``ptqsam`` command line: a thin layer over the library.

Every command fails with one clear line and a non-zero exit on bad input (``--debug`` shows the
traceback), checks its device and output paths before any work, and prints its result before
writing it (a result that cannot be written is saved elsewhere, and the error says where); long
work shows progress bars.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import click

from ptqsam import __version__
from ptqsam.constants import DEVICES, EVAL_PROMPT_KINDS, MODEL_TYPES, PROMPT_KINDS, SITE_KINDS
from ptqsam.demo import (DEMO_BITS, DEMO_CALIB_IMAGES, DEMO_CALIB_SETS, DEMO_FLOAT_SITES, DEMO_IMAGES, DEMO_RECIPES,
                         DEMO_RECON_ITERATIONS, DEMO_RECON_RECIPE, DEMO_SEARCH_ROWS, DEMO_WORKERS)
from ptqsam.errors import PtqsamError
from quantizers.errors import QuantizationError

class _Group(click.Group):
    """Turns library errors into one line on stderr and exit code 1; anything else (a bug) into
    one ``internal error`` line, also exit code 1."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except Exception as error:
            if ctx.meta.get("debug"):
                traceback.print_exc()
            expected = isinstance(error, (PtqsamError, QuantizationError, OSError))
            text = str(error).splitlines()[0] if str(error) else type(error).__name__
            click.echo(f"error: {text}" if expected else
                       f"error: internal error ({type(error).__name__}: {text}); --debug shows the traceback", err=True)
            ctx.exit(1)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        """The global flags (:data:`GLOBAL_FLAGS`) work after the command too: they are moved in
        front of it (up to a ``--``)."""
        end = args.index("--") if "--" in args else len(args)
        flags = [arg for arg in args[:end] if arg in GLOBAL_FLAGS]
        rest = [arg for arg in args[:end] if arg not in GLOBAL_FLAGS]
        return super().parse_args(ctx, flags + rest + args[end:])


#: flags of ``ptqsam`` itself, accepted before or after the command (``ptqsam demo -v``)
GLOBAL_FLAGS = ("--debug", "-v", "--verbose", "-q", "--quiet")


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ptqsam")
@click.option("--debug", is_flag=True, help="Show tracebacks on errors (before or after the command).")
@click.option("-v", "--verbose", is_flag=True,
              help="Log progress details (calibration images, ...); before or after the command.")
@click.option("-q", "--quiet", is_flag=True,
              help="For CI logs: no progress bars, only results, warnings and errors; before or after the command.")
@click.pass_context
def main(ctx: click.Context, debug: bool, verbose: bool, quiet: bool) -> None:
    """Post-training quantization experiments on SAM, TinySAM and MobileSAM."""
    from ptqsam.distributed import process_group
    from ptqsam.progress import silenced

    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet exclude each other: give one")
    ctx.meta["debug"] = debug
    logging.basicConfig(format="%(message)s")
    ctx.with_resource(_log_level(logging.INFO if verbose else logging.WARNING))
    ctx.with_resource(silenced(quiet))
    ctx.with_resource(process_group())  # under torchrun: join the group, leave it when the command ends


@contextlib.contextmanager
def _log_level(level: int) -> Iterator[None]:
    """ptqsam's (and quantizers') log messages from ``level`` up while the command runs (the previous
    levels after it)."""
    loggers = [logging.getLogger(name) for name in ("ptqsam", "quantizers")]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before):
            logger.setLevel(old)


def _is_main() -> bool:
    """Rank 0 of a torchrun launch (or the only process): the one that prints results and writes files."""
    from ptqsam.distributed import is_main

    return is_main()


def model_options(func: Callable) -> Callable:
    @click.option("--model", "model_type", type=click.Choice(MODEL_TYPES), default="testbed", show_default=True,
                  help="Model type.")
    @click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                  help="Checkpoint file (default: packaged testbed weights, else random init).")
    @click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)
    return wrapper


def data_options(func: Callable | None = None, *, detections: bool = True) -> Callable:
    """--images, --annotations, --detections, --prompt and --seed; ``detections=False`` for a
    command that measures mIoU only (ground-truth prompts): --detections is refused, saying why,
    and --prompt offers no detections prompt."""
    options = [
        click.option("--images", type=click.Path(file_okay=False), default=None,
                     help="COCO-format image folder (default: a generated synthetic dataset)."),
        click.option("--annotations", type=click.Path(dir_okay=False), default=None,
                     help="COCO instances JSON for --images."),
        click.option("--detections", type=click.Path(dir_okay=False), default=None,
                     help="Detector boxes (COCO results JSON) for mask AP.") if detections else
        click.option("--detections", hidden=True, expose_value=False, callback=_no_detections),
        click.option("--prompt", type=click.Choice(EVAL_PROMPT_KINDS if detections else PROMPT_KINDS), default="box",
                     show_default=True),
        click.option("--seed", type=int, default=0, show_default=True)]

    def decorate(func: Callable) -> Callable:
        for option in reversed(options):
            func = option(func)
        return func
    return decorate if func is None else decorate(func)


def _no_detections(context: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(f"{context.command.name} measures mIoU with ground-truth prompts: --detections (detector "
                               "boxes, for mask AP) means nothing here; `ptqsam evaluate --detections` measures mask AP")


def quant_options(func: Callable) -> Callable:
    @click.option("--recipe", default="minmax", show_default=True, help="Shipped recipe name or YAML path.")
    @click.option("--bits", default="W8A8", show_default=True, help="Bit-widths as WxAy, e.g. W4A8.")
    @click.option("--calib-images", type=int, default=32, show_default=True)
    @click.option("--search-rows", type=int, default=None,
                  help="Hessian search: score each unit on at most this many random cached rows (default: all).")
    @click.option("--float-encoder", is_flag=True, help="Keep the image encoder in float.")
    @click.option("--recon-iterations", type=int, default=None,
                  help="Reconstruction recipes: optimisation steps per block (recipe default: 20000).")
    @click.option("--recon-batch-size", type=int, default=None, help="Reconstruction: images per step (default 1).")
    @click.option("--recon-weight-lr", type=float, default=None, help="Reconstruction: AdaRound lr (default 1e-3).")
    @click.option("--recon-act-lr", type=float, default=None,
                  help="Reconstruction: activation-scale lr (default 4e-5).")
    @click.option("--recon-drop-prob", type=float, default=None,
                  help="Reconstruction: QDrop probability that an element stays float (recipe default).")
    @click.option("--recon-loss", type=click.Choice(("mse", "fisher")), default=None,
                  help="Reconstruction loss (recipe default: mse).")
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)
    return wrapper


def _with_state(model, state: str | None, model_type: str, allow_other_weights: bool) -> tuple[Any, dict[str, Any]]:
    """The mode to evaluate ``model`` in, after loading ``state`` into it (float without one), and
    what the result names: the state, its recipe, bits and fingerprint, and any weights override."""
    import contextlib

    from ptqsam.bits import bits_label
    from ptqsam.calibration import calibrated_quantizing, load_calibrated
    from ptqsam.constants import FLOAT
    from ptqsam.reconstruction.reconstruct import REFERENCE_BUG_KEY

    if state is None:
        return contextlib.nullcontext(), {"state": None, "recipe": FLOAT, "bits": FLOAT, "state_fingerprint": None,
                                          "weights_override": False}
    info = load_calibrated(model, state, model_type=model_type, allow_other_weights=allow_other_weights)
    return calibrated_quantizing(model, info.extra), {
        "state": str(state), "recipe": info.recipe.name, "bits": bits_label(info.w_bits, info.a_bits),
        "state_fingerprint": info.fingerprint["hash"], "weights_override": info.weights_override,
        "reference_drop_bug": REFERENCE_BUG_KEY in info.extra,
        # what made the state (calibration data, prompts, seed, recipe content...), for `compare`
        "state_settings": {key: value for key, value in info.fingerprint["settings"].items()
                           if key not in ("ptqsam", "model", "weights")}}


#: the ``--recon-*`` options (their parameter names) and the reconstruction settings they override
_RECON_OPTIONS = {"recon_iterations": "iterations", "recon_batch_size": "batch_size",
                  "recon_weight_lr": "weight_lr", "recon_act_lr": "activation_lr", "recon_drop_prob": "drop_prob",
                  "recon_loss": "loss"}
#: how errors name those settings (``reconstruction iterations``) -> the option that sets each
_RECON_KEYS = {f"reconstruction {key}": option for option, key in _RECON_OPTIONS.items()}
#: the demo's settings (config keys) -> its options that set them
_DEMO_KEYS = {**{key: key for key in ("calib_images", "calib_sets", "float_sites", "search_rows", "seed", "device",
                                      "out", "workers")}, "synthetic_images": "num_images"}


def _reconstruction(**options: Any) -> dict[str, Any]:
    """The ``--recon-*`` options given, as reconstruction overrides (checked now, before any work)."""
    from ptqsam.reconstruction.config import ReconstructionConfig

    overrides = {_RECON_OPTIONS[key]: value for key, value in options.items() if value is not None}
    try:
        ReconstructionConfig().with_overrides(overrides)
    except PtqsamError as error:
        raise _with_flags(error, _RECON_KEYS) from None
    return overrides


def _with_flags(error: PtqsamError, options: dict[str, str]) -> PtqsamError:
    """``error`` with each setting named in ``options`` (setting -> the parameter of the option that
    set it) written as the running command's flag where the message names it (at its start, after
    ``config`` or ``and``): ``config calib_images must be >= 1`` -> ``--calib-images must be >= 1``,
    since the user typed the flag, not the config key."""
    command = click.get_current_context().command
    flags = {p.name: max(p.opts, key=len) for p in command.params if isinstance(p, click.Option)}
    text = str(error)
    for key, option in sorted(options.items(), key=lambda item: -len(item[0])):
        if option in flags:
            text = re.sub(rf"(^|config |(?<= and )){re.escape(key)}(?![\w'])", flags[option], text)
    return type(error)(text)


def latex_option(func: Callable) -> Callable:
    return click.option("--latex", type=click.Path(dir_okay=False), default=None,
                        help="Also write the report's table as LaTeX (booktabs) to this file.")(func)


def _show_report(rows: list[dict[str, Any]], full_table: Path, latex: str | None, leading: tuple = ()) -> None:
    """Print a report: its markdown table when it fits the terminal, else a summary naming
    ``full_table`` (the file with every column); write its LaTeX table to ``latex``. ``leading``:
    columns put first."""
    import shutil

    from ptqsam.evaluation.report import screen_table
    from ptqsam.io import write_or_rescue

    click.echo(screen_table(rows, full_table, shutil.get_terminal_size().columns, leading), nl=False)
    if latex:
        from ptqsam.evaluation.latex import latex_table

        write_or_rescue(latex, lambda file: file.write(latex_table(rows, leading)))
        click.echo(f"LaTeX table: {latex}")


def _calibration_inputs(model_type: str, checkpoint: str | None, device: str, images: str | None,
                        annotations: str | None, prompt: str, seed: int, recipe: str, calib_images: int,
                        search_rows: int | None, detections: str | None = None) -> tuple[Any, Any, Any, Any, list]:
    """What a calibrating command starts from: its config, the float model, the recipe (checked
    against the model's sites before any work), the calibration dataset and samples (prompted by
    the ``detections`` boxes with ``--prompt detections``)."""
    from ptqsam.data.selection import calibration_set
    from ptqsam.instrument.instrument import check_recipe_sites
    from ptqsam.models.zoo import built_model

    config = _config({"calib_images_dir": "images", "calib_annotations": "annotations"}, models=[model_type],
                     calib_images_dir=images, calib_annotations=annotations, prompt=prompt, seed=seed,
                     calib_images=calib_images, search_rows=search_rows, detections=detections)
    boxes = _prompt_detections(detections, prompt)
    model = built_model(model_type, checkpoint, seed, device)
    checked = check_recipe_sites(model, recipe)
    dataset, samples = calibration_set(config, detections=boxes)
    return config, model, checked, dataset, samples


def _prompt_detections(detections: str | None, prompt: str):
    """The detector boxes (read now, before any work) that prompt the images of a command that
    calibrates or inspects: ``--detections`` goes with ``--prompt detections``."""
    from ptqsam.data.prompts import Detections

    if detections is None:
        return None
    if prompt != "detections":
        raise PtqsamError(f"--detections prompts the images only with --prompt detections (got --prompt {prompt})")
    return Detections(detections)


def _config(renamed: dict[str, str] | None = None, **kwargs: Any):
    """The config of a command's options (None: the config's default). A bad value is an error naming
    the option, as typed; ``renamed``: config key -> option parameter where they differ."""
    from ptqsam.config import ExperimentConfig

    values = {k: v for k, v in kwargs.items() if v is not None}
    try:
        return ExperimentConfig.from_dict(values)
    except PtqsamError as error:
        raise _with_flags(error, {**{key: (renamed or {}).get(key, key) for key in kwargs}, **_RECON_KEYS}) from None


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="results/demo", show_default=True)
@click.option("--images", "num_images", type=int, default=DEMO_IMAGES, show_default=True,
              help="Generated images to evaluate.")
@click.option("--calib-images", type=int, default=DEMO_CALIB_IMAGES, show_default=True,
              help="Generated calibration images per calibration set (sets apart from the evaluated images).")
@click.option("--calib-sets", type=int, default=DEMO_CALIB_SETS, show_default=True,
              help="Calibration sets per cell (mean ± std and min/max over them).")
@click.option("--float-sites", default=DEMO_FLOAT_SITES, show_default=True,
              help="Protocol float list imposed on every recipe (a recipe name), or 'own': each recipe's own.")
@click.option("--search-rows", type=int, default=DEMO_SEARCH_ROWS, show_default=True,
              help="Hessian search (ptq4vit): rows of each unit's cache that score the candidates.")
@click.option("--recipes", default=",".join(DEMO_RECIPES), show_default=True)
@click.option("--bits", default=",".join(DEMO_BITS), show_default=True)
@click.option("--recon-recipe", default=DEMO_RECON_RECIPE, show_default=True,
              help="A reconstruction recipe run at the lowest bit-width only, e.g. ptq4sam-l ('' for none).")
@click.option("--recon-iterations", type=int, default=DEMO_RECON_ITERATIONS, show_default=True,
              help="Its optimisation steps per block (PTQ4SAM-L uses 20000).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", type=click.Choice(DEVICES), default="cpu", show_default=True)
@click.option("--workers", type=int, default=None,
              help=f"Worker processes computing the quantized cells (one torch thread each) [default: {DEMO_WORKERS}; "
                   "1 under torchrun, whose processes share each cell's images].")
@click.option("--publish", "publish_root", type=click.Path(file_okay=False), default=None,
              help="Repository root: copy report.json to docs/demo/NAME.json (and, for the demo's own report, "
                   "the figures to docs/figures/) and regenerate README.md's table of that file.")
@click.option("--publish-name", default="report", show_default=True, help="NAME of the published report.")
@latex_option
def demo(out: str, num_images: int, calib_images: int, calib_sets: int, float_sites: str, search_rows: int,
         recipes: str, bits: str, recon_recipe: str, recon_iterations: int, seed: int, device: str,
         workers: int | None,
         publish_root: str | None, publish_name: str, latex: str | None) -> None:
    """Testbed SAM on generated data: float vs every recipe at W8A8/W6A6/W4A4 and a block
    reconstruction recipe at the lowest bit-width, each cell calibrated on several calibration sets,
    every recipe quantizing the same sites (a few minutes)."""
    from ptqsam.demo import DEMO_REPORT, bimodal_note, cell_records, demo_config, demo_figures, publish
    from ptqsam.preflight import check_output_file
    from ptqsam.sweep import run_sweep

    try:
        config = demo_config(out, num_images, calib_images, calib_sets, float_sites, search_rows, recipes.split(","),
                             bits.split(","), recon_recipe, recon_iterations, seed, device, workers)
    except PtqsamError as error:
        raise _with_flags(error, {**_DEMO_KEYS, **_RECON_KEYS}) from None
    if latex:
        check_output_file(latex, "--latex")
    rows = run_sweep(config)
    if not _is_main():
        return
    _show_report(rows, Path(out) / "report.md", latex)
    note = bimodal_note(cell_records(out))
    if note:
        click.echo(note)
    figures = [path.name for path in demo_figures(config)]
    click.echo(f"results: {out}/report.md, report.csv, report.json, plots/")
    if publish_root is not None:
        pictures = [name for name in figures if name.endswith(".png")] if publish_name == DEMO_REPORT else []
        for path in publish(out, publish_root, pictures, publish_name):
            click.echo(f"published: {path}")


@main.command()
@model_options
@data_options
@quant_options
@click.option("--out", "state_path", type=click.Path(dir_okay=False), default="results/calibrated.pt",
              show_default=True, help="Calibrated state file.")
def calibrate(model_type, checkpoint, device, images, annotations, detections, prompt, seed, recipe, bits,
              calib_images, search_rows, float_encoder, state_path, **recon_options) -> None:
    """Calibrate a recipe on a few images of --images and save the calibrated state (without
    --images: a generated calibration set, apart from the images `evaluate` generates)."""
    from ptqsam.bits import parse_bits
    from ptqsam.calibration import calibrate as run_calibration, save_calibrated
    from ptqsam.data.selection import data_fingerprint
    from ptqsam.fingerprint import file_sha256
    from ptqsam.models.blocks import ENCODER_SITES
    from ptqsam.preflight import check_output_file

    if (images is None) != (annotations is None):
        raise PtqsamError("--images and --annotations go together: give both or neither")
    w, a = parse_bits(bits)
    reconstruction = _reconstruction(**recon_options)
    check_output_file(state_path, "--out")
    _, model, recipe, dataset, samples = _calibration_inputs(model_type, checkpoint, device, images, annotations,
                                                             prompt, seed, recipe, calib_images, search_rows,
                                                             detections)
    exclude = (ENCODER_SITES,) if float_encoder else ()
    report = run_calibration(model, recipe, w, a, samples, exclude, search_rows=search_rows,
                             reconstruction=reconstruction)
    if not _is_main():
        return
    click.echo(json.dumps({"state": state_path, "images": report.image_ids, "prompts": report.num_prompts,
                           "seconds": report.seconds, "unreached_sites": len(report.unreached),
                           "bimodal": {k: v["bimodal"] for k, v in report.bimodal.items()},
                           "reconstruction": {k: {"mse_before": v["mse_before"], "mse_after": v["mse_after"]}
                                              for k, v in report.reconstruction.items()},
                           "reference_drop_bug": report.reference_drop_bug is not None}, indent=2))
    settings = {"data": data_fingerprint(dataset, report.image_ids), "prompt": prompt, "seed": seed,
                "search_rows": search_rows, "exclude": list(exclude), "reconstruction": reconstruction,
                **({"detections": file_sha256(detections)} if detections else {})}
    save_calibrated(model, state_path, report, recipe, model_type, w, a, settings)


@main.command()
@model_options
@data_options
@click.option("--state", type=click.Path(dir_okay=False), default=None,
              help="Calibrated state from `ptqsam calibrate` (default: evaluate the float model).")
@click.option("--eval-images", type=int, default=0, show_default=True, help="Limit (0 = all).")
@click.option("--single-mask", is_flag=True, help="One mask per prompt (default: best of 3 by predicted IoU).")
@click.option("--detector-score", is_flag=True, help="AP score = detector score (default: × predicted IoU).")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the result's record as JSON here (what was evaluated, the metrics, per-instance IoUs).")
@click.option("--allow-other-weights", is_flag=True,
              help="Apply --state to other weights than it was calibrated on (refused by default).")
@click.option("--reference", type=click.Path(dir_okay=False), default=None,
              help="The float model's record on the same images (`evaluate --out` without --state, or a sweep's "
                   "float cell): adds the agreement with its masks and the Δ's against it.")
def evaluate(model_type, checkpoint, device, images, annotations, detections, prompt, seed, state, eval_images,
             single_mask, detector_score, out, allow_other_weights, reference) -> None:
    """mIoU (and mask AP with --detections) of a float or calibrated model; with --reference, the
    Δ's against the float model."""
    from ptqsam.data.prompts import Detections
    from ptqsam.data.selection import dataset_for
    from ptqsam.evaluation.evaluator import EvalOptions, evaluate as run_evaluation
    from ptqsam.evaluation.records import (PER_INSTANCE, check_reference, evaluation_record, evaluation_settings,
                                           read_float_record, reference_result)
    from ptqsam.io import json_text, write_or_rescue
    from ptqsam.models.zoo import built_model, weights_id
    from ptqsam.preflight import check_output_file

    if out:
        check_output_file(out, "--out")
    float_record = read_float_record(reference, "--reference") if reference else None
    config = _config(models=[model_type], images=images, annotations=annotations, detections=detections,
                     prompt=prompt, seed=seed, eval_images=eval_images)
    boxes = Detections(detections) if detections else None
    model = built_model(model_type, checkpoint, seed, device)
    mode, used = _with_state(model, state, model_type, allow_other_weights)
    dataset = dataset_for(config)
    ids = dataset.image_ids[:eval_images] if eval_images else list(dataset.image_ids)
    options = EvalOptions(prompt, multimask=not single_mask, score_with_iou=not detector_score, seed=seed)
    weights = weights_id(model_type, checkpoint, seed)
    evaluation = evaluation_settings(dataset, ids, options, detections)
    if float_record is not None:
        check_reference(float_record, model_type, weights, evaluation, f"--reference {reference}")
    with mode:
        result = run_evaluation(model, dataset, ids, options, boxes,
                                reference_result(float_record) if float_record and _is_main() else None)
    if not _is_main():
        return
    record = evaluation_record({"model": model_type, "weights": weights, "checkpoint_path": checkpoint, **used,
                                "evaluation": evaluation}, ids, result, float_record, reference)
    click.echo(json_text({k: v for k, v in record.items() if k not in PER_INSTANCE}), nl=False)
    if out:
        write_or_rescue(out, lambda file: file.write(json_text(record)))


@main.command()
@click.argument("config_path", type=click.Path(dir_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Override the config's results folder.")
@click.option("--device", type=click.Choice(DEVICES), default=None, help="Override the config's device.")
@latex_option
def sweep(config_path: str, out: str | None, device: str | None, latex: str | None) -> None:
    """Run a sweep config (models × recipes × bits); finished cells are skipped on re-runs."""
    from ptqsam.config import ExperimentConfig
    from ptqsam.preflight import check_output_file
    from ptqsam.sweep import run_sweep

    config = ExperimentConfig.from_yaml(config_path)
    if out:
        config = config.replace(out=out)
    if device:
        config = config.replace(device=device)
    if latex:
        check_output_file(latex, "--latex")
    rows = run_sweep(config)
    if _is_main():
        _show_report(rows, Path(config.out) / "report.md", latex)
        _plots(Path(config.out))


@main.command()
@click.argument("results", type=click.Path(exists=True))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Plot folder (default RESULTS/plots).")
def plot(results: str, out: str | None) -> None:
    """Degradation plots of a sweep's results folder (or its report.json)."""
    from ptqsam.preflight import check_output_folder

    path = Path(results)
    folder = path if path.is_dir() else path.parent
    check_output_folder(out or folder / "plots", "plot folder")
    for written in _plots(folder, Path(out) if out else None):
        click.echo(str(written))


def _plots(results: Path, out: Path | None = None) -> list[Path]:
    from ptqsam.plots import plot_report

    report = results / "report.json"
    if not report.is_file():
        raise PtqsamError(f"no report.json in {results}: run a sweep first")
    return list(plot_report(report, out or results / "plots"))


@main.command()
@model_options
@data_options
@click.option("--state", type=click.Path(dir_okay=False), default=None,
              help="Calibrated state: also list each site's quantizer and its parameters.")
@click.option("--kind", type=click.Choice(SITE_KINDS), default=None, help="Only sites of this kind.")
@click.option("--stats-images", type=int, default=0, show_default=True,
              help="Run this many images (drawn by --seed) and add each site's activation statistics "
                   "(min, max, mean, std, |x| 99.9th percentile; with --state, the relative quantization error).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--allow-other-weights", is_flag=True,
              help="Apply --state to other weights than it was calibrated on (refused by default).")
def inspect(model_type, checkpoint, device, images, annotations, detections, prompt, seed, state, kind, stats_images,
            as_json, allow_other_weights) -> None:
    """Sites of a model (name, kind, shape); with --state, the calibrated quantizers; with
    --stats-images, activation statistics."""
    from ptqsam.calibration import load_calibrated
    from ptqsam.instrument import attached_quantizers, site_inventory
    from ptqsam.models.zoo import built_model

    if stats_images < 0:
        raise PtqsamError(f"--stats-images must be >= 0, got {stats_images}")
    config = _config(models=[model_type], images=images, annotations=annotations, prompt=prompt, seed=seed,
                     detections=detections)
    boxes = _prompt_detections(detections, prompt)
    model = built_model(model_type, checkpoint, seed, device)
    quantizers = attached_quantizers(model) if state is None else \
        load_calibrated(model, state, None, model_type, allow_other_weights).quantizers
    rows = []
    for row in site_inventory(model):
        if kind and row.kind != kind:
            continue
        entry = {"name": row.name, "kind": row.kind, "shape": list(row.shape) if row.shape else None,
                 "owner": row.owner}
        if row.name in quantizers:
            entry["quantizer"] = quantizers[row.name].summary()
        rows.append(entry)
    if stats_images:
        rows = _with_statistics(model, config, rows, stats_images, boxes)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for entry in rows:
        shape = "x".join(map(str, entry["shape"])) if entry["shape"] else "-"
        stats = entry.get("stats")
        numbers = "" if stats is None else (
            f" [{stats['min']:.3g}, {stats['max']:.3g}] mean {stats['mean']:.3g} std {stats['std']:.3g} "
            f"|x|p99.9 {'≈' if stats['abs_p999_sampled'] else ''}{stats['abs_p999']:.3g}"
            + (f" rel.err {stats['rel_error']:.3g}" if "rel_error" in stats else ""))
        click.echo(f"{entry['name']:<75} {entry['kind']:<9} {shape:<18} {entry.get('quantizer', '')}{numbers}")
    click.echo(f"{len(rows)} sites")


def _with_statistics(model, config, rows: list[dict], count: int, detections=None) -> list[dict]:
    """The rows of the sites the images reach, each with its activation statistics."""
    from ptqsam.analysis import site_statistics
    from ptqsam.data.samples import calibration_samples
    from ptqsam.data.selection import dataset_for

    samples = calibration_samples(dataset_for(config), count, config.seed, config.prompt, detections=detections)
    table = site_statistics(model, samples, [r["name"] for r in rows], seed=config.seed)
    return [{**r, "stats": table[r["name"]]} for r in rows if r["name"] in table]


# the mixed-precision commands (sensitivity, allocate, accuracy-control, pareto) live in their own module
import ptqsam.cli_precision  # noqa: E402,F401  (registers them with main)
import ptqsam.cli_compare  # noqa: E402,F401  (registers compare with main)


if __name__ == "__main__":
    # run as a script this module is __main__, and cli_precision registered its commands with the
    # main of the module imported as ptqsam.cli: run that one
    from ptqsam.cli import main as registered_main

    sys.exit(registered_main())
