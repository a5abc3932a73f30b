"""Names used across ptqsam, defined once. No heavy imports: the CLI reads them at start-up."""

#: Model types of the zoo (:data:`ptqsam.models.zoo.BUILDERS` builds each).
MODEL_TYPES: tuple[str, ...] = ("vit_b", "vit_l", "vit_h", "tinysam", "mobilesam", "testbed")
#: Ground-truth prompt kinds of the mIoU protocol.
PROMPT_KINDS: tuple[str, ...] = ("box", "tight_box", "center_point", "random_points")
#: Prompt kinds of an evaluation: ground truth, or detector boxes only (mask AP).
EVAL_PROMPT_KINDS: tuple[str, ...] = PROMPT_KINDS + ("detections",)
#: Kinds of site. "output" sites (the q@kᵀ logits, the attn@v context, the mask decoder's final
#: matmul) are never quantized by the shipped recipes; they let calibration see layer outputs.
SITE_KINDS: tuple[str, ...] = ("weight", "input", "query", "key", "value", "probs", "matmul_a", "matmul_b", "output")
#: Devices a command runs on.
DEVICES: tuple[str, ...] = ("cpu", "cuda")
#: Recipe name and bits label of the float baseline run.
FLOAT = "float"
#: What ``ptqsam pareto`` and :func:`ptqsam.pareto_front` run on unless told (config fields).
PARETO_DEFAULTS = {"calib_images": 4, "synthetic_images": 48, "out": "results/pareto"}
#: What ``ptqsam accuracy-control`` and :func:`ptqsam.accuracy_control` evaluate on unless told.
CONTROL_DEFAULTS = {"synthetic_images": 48, "out": "results/accuracy_control"}
