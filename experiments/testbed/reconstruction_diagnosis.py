"""Where a reconstructed state's error against float goes, beside the state it was reconstructed from.

For two states a sweep saved (by default ``ptq4sam`` and ``ptq4sam-l`` at W4A4 on calibration set 0
of ``experiments/testbed/reconstruction_w4a4.yaml``), on evaluated images the calibration never saw:

1. each reconstruction unit's output MSE against float, its inputs from the quantized model as at
   evaluation (did the reconstruction carry over to new images?);
2. the damage to the mask decoder's output (:class:`~ptqsam.analysis.sensitivity.Damage`: mask-logit
   MSE and the IoU of the masks with the float model's) with every quantizer on, the image encoder's
   only, and the mask decoder's only;
3. the same with only one product of the mask decoder quantized (the largest ``--top``).

    ptqsam sweep experiments/testbed/reconstruction_w4a4.yaml
    python experiments/testbed/reconstruction_diagnosis.py results/testbed_reconstruction_w4a4 --images 16
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ptqsam.analysis.groups import model_groups
from ptqsam.analysis.sensitivity import GroupMeter, reference_predictions
from ptqsam.calibration import load_calibrated
from ptqsam.data import CocoDataset
from ptqsam.data.samples import calibration_samples
from ptqsam.instrument import attached_quantizers
from ptqsam.models import build_model
from ptqsam.reconstruction import ReconstructionConfig
from ptqsam.reconstruction.reconstruct import unit_output_errors


def diagnose(state: Path, samples: list) -> dict:
    """Unit output errors and the damage of each part and decoder product of the state at ``state``."""
    model = build_model("testbed")
    loaded = load_calibrated(model, state)
    names = list(attached_quantizers(model))
    meter = GroupMeter(model, samples, reference_predictions(model, samples), "only")
    parts = {"all": None, "image encoder only": [n for n in names if n.startswith("image_encoder.")],
             "mask decoder only": [n for n in names if n.startswith("mask_decoder.")]}
    products = model_groups(model, "unit", parts["mask decoder only"])
    units = loaded.recipe.reconstruction_config() or ReconstructionConfig()  # the recipe's units, else blocks
    return {"recipe": loaded.recipe.name, "units": unit_output_errors(model, samples, units),
            "parts": {label: meter.measure(sites) for label, sites in parts.items()},
            "products": {g.name: meter.measure(g.sites) for g in products}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="the sweep's results folder (its states/ and data/)")
    parser.add_argument("--recipes", default="ptq4sam,ptq4sam-l", help="the starting point and the reconstructed")
    parser.add_argument("--bits", default="W4A4")
    parser.add_argument("--calib-set", type=int, default=0)
    parser.add_argument("--images", type=int, default=16, help="evaluated images to measure on")
    parser.add_argument("--top", type=int, default=6, help="decoder products to list")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    (data,) = [d for d in (args.results / "data").iterdir() if d.is_dir()]
    samples = calibration_samples(CocoDataset(data / "images", data / "annotations.json"), args.images, seed=0)
    runs = [diagnose(args.results / "states" / f"testbed__{r}__{args.bits}__calib{args.calib_set}.pt", samples)
            for r in args.recipes.split(",")]
    base, tuned = runs
    print(f"{args.bits}, calibration set {args.calib_set}; measured on {len(samples)} evaluated images")
    print("\n1. unit output MSE against float (quantized inputs, as at evaluation)")
    print(f"{'unit':<52}{base['recipe']:>12}{tuned['recipe']:>12}{'ratio':>8}")
    for name, error in base["units"].items():
        print(f"{name:<52}{error:>12.4g}{tuned['units'][name]:>12.4g}{tuned['units'][name] / error:>8.3f}")
    print("\n2. damage to the output: mask-logit MSE / IoU of the masks with the float model's")
    for label in base["parts"]:
        b, t = base["parts"][label], tuned["parts"][label]
        print(f"{label:<28}{base['recipe']:>10} {b.mse:8.3f} / {b.iou:.4f}"
              f"{tuned['recipe']:>12} {t.mse:8.3f} / {t.iou:.4f}")
    print(f"\n3. only one mask-decoder product quantized (the {args.top} with the lowest mask IoU)")
    worst = sorted(base["products"], key=lambda n: base["products"][n].iou)[:args.top]
    for name in worst:
        b, t = base["products"][name], tuned["products"][name]
        print(f"{name:<66}{b.iou:>8.4f}{t.iou:>8.4f}")


if __name__ == "__main__":
    main()
