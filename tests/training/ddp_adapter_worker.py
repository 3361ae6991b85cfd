"""One adapter training on the tiny preset, for tests/training/test_adapter_distributed.py.

Run alone (`python ddp_adapter_worker.py run.json`) it is a 1-process training; under
`python -m torch.distributed.run --nproc_per_node N` every process runs it and accelerate joins them into one
data-parallel training (gloo on CPU). run.json: {"spec", "clip", "reward", "out", "steps", "batch_size"}.
Not a test module (no test_ prefix): pytest never collects it.
"""

from __future__ import annotations

import json
import sys

import torch


def samples():
    from icg.training.adapter_data import AdapterData

    covers = torch.randint(
        0, 256, (3, 3, 64, 64), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    return AdapterData(
        item_ids=["1", "2", "3"],
        titles=["Toy Story", "Heat", "Psycho"],
        covers=covers,
        user_ids=["1", "2"],  # known to the tiny preset's user encoder (ml-100k ids)
        profiles=["likes comedy; a 24-year-old male technician", "likes horror; a 53-year-old female"],
        samples=torch.tensor([[0, 0], [0, 1], [1, 2], [1, 0], [0, 2], [1, 1], [0, 1], [1, 2]]),
    )


def run(job: dict) -> dict:
    from icg.loading import load_cover_pipeline
    from icg.presets import load_preset_folder
    from icg.rewards import load_reward
    from icg.training.adapter import AdapterTrainConfig, train_adapter

    config = AdapterTrainConfig(
        steps=job["steps"], batch_size=job["batch_size"], num_inference_steps=3, stop_window=2,
        max_prompt_tokens=8, lambda_hps=0.0, lambda_pick=0.0, checkpoint_every=1, sample_every=1,
        num_sample_covers=2, lr=1e-2,
    )  # fmt: skip
    pipe = load_cover_pipeline(load_preset_folder(job["spec"]))
    rewards = {
        "clip": load_reward("clip", job["clip"]),
        "personalized": load_reward("personalized", job["reward"]),
    }
    return train_adapter(pipe, rewards, samples(), job["out"], config, progress=False, threads=1)


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as f:
        run(json.load(f))
