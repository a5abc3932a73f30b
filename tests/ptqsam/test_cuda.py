"""On a CUDA device (skipped elsewhere; ``pytest -m cuda`` runs only these and the other CUDA tests):
every shipped recipe calibrates and evaluates the testbed without leaving the device, and the
quantized model's outputs stay close to the same model on the CPU; block reconstruction learns there too."""

from __future__ import annotations

import pytest
import torch

from ptqsam.calibration import calibrate, calibration_samples
from ptqsam.evaluation.evaluator import evaluate
from ptqsam.inference import SamRunner
from ptqsam.instrument import attached_quantizers, quantizing

pytestmark = pytest.mark.cuda


@pytest.mark.parametrize("recipe", ["minmax", "ptq4vit", "ptq4sam"])
def test_recipes_calibrate_and_evaluate_on_cuda(recipe, tiny_dataset, random_testbed):
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    model = random_testbed().cuda()
    calibrate(model, recipe, 8, 8, samples, progress=False)
    for name, quantizer in attached_quantizers(model).items():
        assert all(t.device.type == "cuda" for t in quantizer.buffers()), name
    reference = evaluate(model, tiny_dataset, progress=False)
    with quantizing(model):
        result = evaluate(model, tiny_dataset, reference=reference, progress=False)
    assert result.metrics["agreement"] > 0.8


def test_w8a8_on_cuda_matches_the_cpu(tiny_dataset, random_testbed):
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    outputs = {}
    for device in ("cpu", "cuda"):
        model = random_testbed().to(device)
        calibrate(model, "minmax", 8, 8, samples, progress=False)
        runner = SamRunner(model)
        p = samples[0].prompts
        with quantizing(model), torch.inference_mode():
            embedding = runner.embed(samples[0].image)
            outputs[device] = runner.decode(embedding, p.boxes, p.points, p.point_labels).low_res_logits
    # different kernels round differently, and a rounding step can move one fake-quantized value a level
    torch.testing.assert_close(outputs["cuda"].cpu(), outputs["cpu"], rtol=0.05, atol=0.05)


def test_block_reconstruction_learns_on_cuda(tiny_dataset, random_testbed):
    """PTQ4SAM-L's reconstruction (AdaRound, LSQ and learned AGQ scales, QDrop) on the device: the
    learned state stays there and the quantized model still agrees with the float one."""
    samples = calibration_samples(tiny_dataset, 1, seed=0)
    model = random_testbed().cuda()
    calibrate(model, "ptq4sam-l", 8, 8, samples, progress=False, reconstruction={"iterations": 5})
    for name, quantizer in attached_quantizers(model).items():
        assert all(t.device.type == "cuda" for t in quantizer.state_dict().values()), name
    reference = evaluate(model, tiny_dataset, progress=False)
    with quantizing(model):
        result = evaluate(model, tiny_dataset, reference=reference, progress=False)
    assert result.metrics["agreement"] > 0.8


def test_the_hessian_search_on_a_row_sample_stays_on_cuda(tiny_dataset, random_testbed):
    """ptq4vit with a row budget: the conv searches draw their batch elements (of two images) on the
    device's tensors."""
    samples = calibration_samples(tiny_dataset, 2, seed=0)
    model = random_testbed().cuda()
    report = calibrate(model, "ptq4vit", 8, 8, samples, progress=False, search_rows=64)
    assert "image_encoder.patch_embed.proj" in report.hessian
    for name, quantizer in attached_quantizers(model).items():
        assert all(t.device.type == "cuda" for t in quantizer.buffers()), name


def test_what_processes_send_each_other_travels_on_the_cpu():
    """A pickled CUDA tensor is unpickled on its sender's GPU: under torchrun with one GPU per
    process, every tensor handed between processes must go through the CPU."""
    import pickle

    from ptqsam.calibration.bimodal import _KeyStatistics
    from ptqsam.distributed import _portable

    sent = _portable({"a": [torch.ones(3, device="cuda")], "b": (torch.zeros(2, device="cuda"), 1)})
    assert sent["a"][0].device.type == "cpu" and sent["b"][0].device.type == "cpu" and sent["b"][1] == 1
    stats = _KeyStatistics(16, seed=0)
    stats(None, (), torch.randn(2, 5, 8, device="cuda"))
    received = pickle.loads(pickle.dumps(stats))
    assert received.sums.device.type == "cpu"
    received(None, (), torch.randn(2, 5, 8, device="cuda"))  # the receiver adds its own GPU's keys
    assert received.count == 20
