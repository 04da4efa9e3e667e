"""The demo: the embedded SmolLM2-135M-Instruct, rebuilt as an HF checkpoint, quantized to
Q4_K_M, then answering the bundled sample questions and scoring them against our gold answers."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from . import dataset, embedded, vendor
from .infer import InferResult, InferSettings, infer
from .quantize import QuantizeResult, QuantizeSettings, quantize
from .samples import samples_gold_path, samples_path
from .sampler import SamplingParams
from .score import Report, score

# A 135M model rambles; a shorter budget keeps the demo to a minute on two cores.
DEMO_MAX_NEW_TOKENS = 128


def checkpoint() -> Path:
    """The embedded model as a Hugging Face checkpoint (built once, cached)."""
    target = vendor.cache_root() / "checkpoints" / embedded.SMOLLM2_NAME
    return embedded.rebuild_checkpoint(embedded.smollm2_gguf(), target)


def run(output_dir: Path = Path("models")) -> tuple[QuantizeResult, InferResult, Report]:
    quantized = quantize(str(checkpoint()), QuantizeSettings(types=("Q4_K_M",), output_dir=output_dir))
    model = quantized.files[0].path
    # Eight items: always answered afresh, so that a demo after an update never meets answers
    # recorded with the old defaults.
    output = output_dir / "samples.answers.json"
    if output.exists() and dataset.read_settings(output) is None:  # the demo's own, from before records
        output.unlink()  # (infer refuses answers without one, and the demo takes no --output)
    settings = InferSettings(model=model, output=output, resume=False,
                             sampling=replace(SamplingParams(), max_new_tokens=DEMO_MAX_NEW_TOKENS))
    answers = infer(samples_path(), settings)
    return quantized, answers, score(answers.output, samples_gold_path())
