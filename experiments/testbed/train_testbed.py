"""Train the testbed SAM on generated synthetic data (seeded; fits a 2-core CPU).

Writes fp16 weights to ``ptqsam/weights/testbed.pt`` and the training config with its measured
figures to ``ptqsam/weights/testbed.json``; the default commands of ptqsam then use them.

    python experiments/testbed/train_testbed.py                 # the shipped run
    python experiments/testbed/train_testbed.py --steps 20 --out /tmp/tb   # a quick try

Loss as SAM's: per prompt, 20·focal + dice on the low-resolution logits of each of the three
masks, the best of the three back-propagated, plus the MSE between predicted and actual IoU.
Prompts: every instance is prompted twice, by its (jittered) ground-truth box and by one random
point inside its mask.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from ptqsam.data import CocoDataset, generate_dataset
from ptqsam.evaluation.evaluator import EvalOptions, evaluate
from ptqsam.io import write_atomic, write_json_atomic
from ptqsam.models.testbed import TestbedConfig, build_testbed

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "ptqsam" / "weights"


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    train_images: int = 2000
    val_images: int = 100
    steps: int = 3400
    batch_images: int = 8
    prompts_per_image: int = 6
    lr: float = 1.5e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    box_jitter: float = 0.05
    threads: int = 2
    curve_every: int = 500


@dataclass
class TrainData:
    """Training images in memory with, per instance, its box and its low-resolution mask."""

    images: torch.Tensor  # N x 3 x S x S uint8
    boxes: list[np.ndarray]  # per image: M x 4 XYXY
    masks: list[torch.Tensor]  # per image: M x s x s float {0, 1} at the decoder's resolution


def load_training_data(dataset: CocoDataset, low_res: int) -> TrainData:
    images, boxes, masks = [], [], []
    for sample in tqdm(dataset.samples(), total=len(dataset.image_ids), desc="load", leave=False):
        images.append(torch.from_numpy(sample.image).permute(2, 0, 1))
        boxes.append(np.stack([inst.box_xyxy for inst in sample.instances]))
        full = torch.from_numpy(np.stack([inst.mask for inst in sample.instances])).float()[:, None]
        masks.append((F.adaptive_avg_pool2d(full, low_res)[:, 0] >= 0.5).float())
    return TrainData(torch.stack(images), boxes, masks)


def sample_prompts(box: np.ndarray, mask: torch.Tensor, rng: np.random.Generator, jitter: float, scale: float):
    """Per instance a jittered box and one random point of its (low-res) mask."""
    wh = np.repeat(box[:, 2:] - box[:, :2], 2, axis=1)
    boxes = box + rng.normal(0, jitter, box.shape) * wh
    points = np.zeros((len(box), 1, 2))
    for i, m in enumerate(mask.numpy()):
        ys, xs = np.nonzero(m) if m.any() else np.nonzero(np.ones_like(m))
        j = rng.integers(len(xs))
        points[i, 0] = (np.array([xs[j], ys[j]]) + rng.random(2)) * scale
    return boxes, points


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    loss = ce * (1 - p_t) ** gamma * (alpha * target + (1 - alpha) * (1 - target))
    return loss.flatten(-2).mean(-1)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = logits.sigmoid().flatten(-2)
    t = target.flatten(-2)
    return 1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)


def image_loss(model, features, data, index, rng, cfg: TrainConfig) -> torch.Tensor:
    box, mask = data.boxes[index], data.masks[index]
    pick = rng.permutation(len(box))[: cfg.prompts_per_image]
    box, mask = box[pick], mask[pick]
    scale = model.image_encoder.img_size / mask.shape[-1]
    boxes, points = sample_prompts(box, mask, rng, cfg.box_jitter, scale)
    # A box (two corners) and a point (plus SAM's padding point) are both two sparse tokens, so
    # the two prompts of every instance go through the decoder in one call.
    box_tokens, _ = model.prompt_encoder(points=None, boxes=torch.as_tensor(boxes, dtype=torch.float), masks=None)
    point_tokens, dense = model.prompt_encoder(
        points=(torch.as_tensor(points, dtype=torch.float), torch.ones(len(points), 1, dtype=torch.int)),
        boxes=None, masks=None)
    sparse = torch.cat([box_tokens, point_tokens])
    dense = dense[:1].expand(len(sparse), -1, -1, -1)
    logits, iou_pred = model.mask_decoder(features, model.prompt_encoder.get_dense_pe(), sparse, dense, True)
    target = mask[:, None].expand(-1, 3, -1, -1).repeat(2, 1, 1, 1)
    per_mask = 20 * focal_loss(logits, target) + dice_loss(logits, target)
    with torch.no_grad():
        pred = logits > 0
        inter = (pred & (target > 0)).flatten(-2).sum(-1).float()
        union = (pred | (target > 0)).flatten(-2).sum(-1).float().clamp(min=1)
    return per_mask.min(dim=1).values.mean() + F.mse_loss(iou_pred, inter / union)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def box_miou(model, dataset: CocoDataset) -> float:
    """Held-out mIoU with ground-truth boxes (the model is left in train mode)."""
    result = evaluate(model.eval(), dataset, options=EvalOptions(prompt="box"), description="curve")
    model.train()
    return round(result.metrics["miou"], 4)


def train(cfg: TrainConfig, arch: TestbedConfig, workdir: Path, val: CocoDataset) -> tuple[torch.nn.Module, dict]:
    """Train; every ``curve_every`` steps the held-out box mIoU is recorded (a learning curve)."""
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    rng = np.random.default_rng(cfg.seed)
    train_set = generate_dataset(workdir / "train", cfg.train_images, seed=cfg.seed + 1000, image_size=arch.image_size)
    model = build_testbed(arch).train()
    low_res = 4 * arch.embedding_size  # the mask decoder upscales the embedding 4x
    data = load_training_data(CocoDataset(train_set.images_dir, train_set.annotations_path), low_res)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    history, curve, start = [], {}, time.perf_counter()
    bar = tqdm(range(cfg.steps), desc="train")
    for step in bar:
        for group in opt.param_groups:
            group["lr"] = learning_rate(step, cfg)
        batch = rng.choice(len(data.images), size=cfg.batch_images, replace=False)
        features = model.image_encoder(model.preprocess(data.images[batch].float()))
        loss = torch.stack([image_loss(model, features[i:i + 1], data, int(b), rng, cfg)
                            for i, b in enumerate(batch)]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        history.append(float(loss))
        bar.set_postfix(loss=f"{np.mean(history[-20:]):.3f}")
        if cfg.curve_every and (step + 1) % cfg.curve_every == 0 and step + 1 < cfg.steps:
            curve[step + 1] = box_miou(model, val)
            tqdm.write(f"step {step + 1}: loss {np.mean(history[-50:]):.3f}, held-out box mIoU {curve[step + 1]}")
    minutes = (time.perf_counter() - start) / 60
    return model.eval(), {"train_minutes": round(minutes, 2), "final_loss": float(np.mean(history[-50:])),
                          "box_miou_curve": curve}


def validation_set(cfg: TrainConfig, arch: TestbedConfig, workdir: Path) -> CocoDataset:
    val_set = generate_dataset(workdir / "val", cfg.val_images, seed=cfg.seed + 2000, image_size=arch.image_size)
    return CocoDataset(val_set.images_dir, val_set.annotations_path)


def validate(model, cfg: TrainConfig, dataset: CocoDataset) -> dict:
    figures = {}
    for prompt in ("box", "center_point", "random_points"):
        result = evaluate(model, dataset, options=EvalOptions(prompt=prompt, seed=cfg.seed), description=f"val {prompt}")
        figures[prompt] = {k: v for k, v in result.metrics.items() if k.startswith("miou") or k.startswith("count")}
    return figures


def save(model, cfg: TrainConfig, arch: TestbedConfig, figures: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    write_atomic(out / "testbed.pt", lambda f: torch.save(state, f), mode="wb")
    record = {"architecture": asdict(arch), "training": asdict(cfg), "figures": figures,
              "torch": torch.__version__}
    write_json_atomic(out / "testbed.json", record)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(TrainConfig()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--out", type=Path, default=WEIGHTS_DIR)
    args = vars(parser.parse_args())
    out = args.pop("out")
    cfg, arch = TrainConfig(**args), TestbedConfig()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        val = validation_set(cfg, arch, Path(tmp))
        model, figures = train(cfg, arch, Path(tmp), val)
        figures["val_miou"] = validate(model, cfg, val)
    figures["script_minutes"] = round((time.perf_counter() - start) / 60, 2)
    save(model, cfg, arch, figures, out)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
