"""AHCPTQ's parts one at a time on the testbed at W4A4, without reconstruction: the demo's data (48
generated images evaluated, 4 calibration images generated apart), the ``ptq4sam`` recipe plus one
part, mIoU; then the MLP lin2 inputs quantized alone (every other site float), uniform against HLUQ.

    python experiments/benchmarks/ahcptq_parts.py --out results/demo
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from ptqsam.calibration import calibrate
from ptqsam.config import ExperimentConfig
from ptqsam.data.selection import calibration_set, dataset_for
from ptqsam.evaluation.evaluator import EvalOptions, evaluate
from ptqsam.instrument import Recipe, attached_quantizers, load_recipe, quantizing
from ptqsam.models import build_model
from quantizers.modules.grouped import ChannelGroupQuantizer


def _with_rule(base: dict[str, Any], name: str, rule: dict[str, Any]) -> Recipe:
    return Recipe.from_dict({**base, "name": name, "rules": [rule] + base["rules"]})


def _spec(rule: dict[str, Any], **changes: Any) -> dict[str, Any]:
    spec = {k: v for k, v in rule["spec"].items() if v is not None and k not in changes}
    return {**rule, "spec": {**spec, **{k: v for k, v in changes.items() if v is not None}}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="results/demo", help="folder of the demo's generated data")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = ExperimentConfig.from_dict({"models": ["testbed"], "recipes": ["ptq4sam"], "bits": ["W4A4"],
                                         "synthetic_images": 48, "calib_images": 4, "seed": 0, "out": args.out})
    dataset, (_, samples) = dataset_for(config), calibration_set(config)
    options = EvalOptions(config.prompt, config.num_points, config.multimask, config.score_with_iou, config.seed)
    ahcptq, ptq4sam = load_recipe("ahcptq").to_dict(), load_recipe("ptq4sam").to_dict()
    hluq, cag = ahcptq["rules"][0], ahcptq["rules"][1]
    lin2 = [f"image_encoder.blocks.{i}.mlp.lin2.input" for i in range(6)] + \
        [f"mask_decoder.transformer.layers.{i}.mlp.lin2.input" for i in range(2)]
    runs = [  # label, recipe, merge the channel groups down to their final count, sites quantizing
        ("ptq4sam", Recipe.from_dict(ptq4sam), False, None),
        ("+ HLUQ on lin2 inputs", _with_rule(ptq4sam, "hluq", hluq), False, None),
        ("+ CAG sites per tensor, averaged min-max", _with_rule(ptq4sam, "t", _spec(cag, granularity=None,
                                                                                   quantizer=None,
                                                                                   quantizer_options=None)),
         False, None),
        ("+ CAG per channel, averaged min-max (AHCPTQ's observer)", _with_rule(ptq4sam, "cag", cag), False, None),
        ("+ CAG per channel, plain min-max", _with_rule(ptq4sam, "m", _spec(cag, observer="minmax")), False, None),
        ("+ CAG, averaged min-max, k-means into 4 groups (no learning)", _with_rule(ptq4sam, "cag", cag), True, None),
        ("lin2 inputs alone, uniform (ptq4sam)", Recipe.from_dict(ptq4sam), False, lin2),
        ("lin2 inputs alone, HLUQ", _with_rule(ptq4sam, "hluq", hluq), False, lin2),
    ]
    for label, recipe, merge, names in runs:
        model = build_model("testbed")
        calibrate(model, recipe, 4, 4, samples, progress=False)
        if merge:
            for quantizer in attached_quantizers(model).values():
                if isinstance(quantizer, ChannelGroupQuantizer):
                    for index in range(len(quantizer.milestones())):
                        quantizer.at_milestone(index)
        with quantizing(model, names):
            result = evaluate(model, dataset, options=options, progress=False)
        print(f"{label}: mIoU {result.metrics['miou']:.4f}", flush=True)


if __name__ == "__main__":
    main()
