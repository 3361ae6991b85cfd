"""More device-check paths (`icg.device_check` runs them after its own): the public rewards, the
reward-hacking guard, the evaluation metrics, the baselines (Textual Inversion, PMG), MMGCN and the batch
generation stage.

Each runs whole on a real device. On fake CUDA the steps that read values back to the host (a float metric,
a `.tolist()` of scores, a backward pass, writing an image file) cannot run; there the path runs the device
half of the same code (named in its detail line) and the host half runs in the real-device run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from icg.device_parts import (
    CheckContext,
    backward,
    check_on_device,
    device_adapter_step,
    device_images,
    device_mllm,
    device_pipeline,
    device_reward_parts,
)

CAPTIONS = ["a cartoon cat in a city at night", "a horror film poster"]


def _public_rewards(ctx: CheckContext) -> dict[str, Any]:
    """HPSv2, PickScore, CLIP, aesthetic: tiny random models in the official layouts, loaded as users do."""
    if "public" not in ctx.parts:
        from icg.testing_rewards import load_public_rewards, write_public_reward_files

        (ctx.work / "public").mkdir()
        rewards = load_public_rewards(write_public_reward_files(ctx.work / "public"))
        ctx.parts["public"] = {name: reward.to(ctx.device) for name, reward in rewards.items()}
    return ctx.parts["public"]


def path_public_rewards(ctx: CheckContext) -> str:
    from icg.rewards import WeightedRewards

    rewards = _public_rewards(ctx)
    images = torch.rand(2, 3, 40, 36, device=ctx.device, requires_grad=True)  # not the towers' size: resized
    out = WeightedRewards.from_rewards(rewards)(images, CAPTIONS, ["u1", "u2"])
    check_on_device("public rewards", ctx.device, {"total": out.total, **out.scores})
    if not backward(ctx, out.total):
        return f"{', '.join(rewards)}: scores (forward only on fake CUDA)"
    check_on_device("public rewards", ctx.device, {"image grad": images.grad})
    return f"{', '.join(rewards)}: scores and image gradients"


def _clip_folder(ctx: CheckContext):
    device_reward_parts(ctx)  # writes the tiny CLIP folder
    return ctx.work / "clip"


def path_guard(ctx: CheckContext) -> str:
    """The guard's held-out covers scored by the training objective and three judges (reward model, SSIM,
    LPIPS-miniCLIP); the real run also records the check in a GuardMonitor."""
    from transformers import CLIPModel

    from icg.measures.perceptual import ClipPerceptualDistance
    from icg.rewards import load_reward
    from icg.training.guard import (
        GuardMonitor,
        GuardRule,
        PerceptualJudge,
        RewardJudge,
        SsimJudge,
        held_out_batch,
        held_out_scores,
    )

    step, _ = device_adapter_step(ctx, False, "reward")
    clip = CLIPModel.from_pretrained(_clip_folder(ctx))
    judges = [
        RewardJudge(load_reward("personalized", ctx.work / "reward")),
        SsimJudge(),
        PerceptualJudge(ClipPerceptualDistance(clip)),
    ]
    for judge in judges:
        judge.to(ctx.device)
    pipe = device_pipeline(ctx)
    with device_mllm(ctx, pipe):
        if ctx.fake:  # the device half; held_out_scores reads the scores back as floats
            scores = held_out_batch(step, judges, torch.arange(2))
            # the objective's per-sample record and SSIM are computed on the host by design
            check_on_device(
                "guard", ctx.device, {j.name: scores[j.name] for j in judges if not isinstance(j, SsimJudge)}
            )
            return f"objective + {len(judges)} judges on 2 held-out covers (no host read-back on fake CUDA)"
        scores = held_out_scores(step, judges, batch_size=2)
    monitor = GuardMonitor(GuardRule(), {j.name: j.higher_is_better for j in judges})
    monitor.record(0, scores)
    return f"objective + {len(judges)} judges on {len(scores['train_reward'])} held-out covers, recorded"


def path_metrics(ctx: CheckContext) -> str:
    """SSIM, LPIPS-miniCLIP, FD-miniCLIP, CLIP score-miniCLIP over generated-like images and CPU covers."""
    from icg.evaluation.fd import FD_NAME, fd_metric
    from icg.evaluation.metrics import build_metrics

    suite = build_metrics(clip=_clip_folder(ctx), batch_size=2).to(ctx.device)
    images = torch.rand(3, 3, 48, 48, device=ctx.device)
    gen = torch.Generator().manual_seed(0)
    references = torch.randint(
        0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=gen
    )  # covers, on the host
    if not ctx.fake:
        results = suite.compute(images, references=references, texts=CAPTIONS + ["a dragon"])
        return ", ".join(f"{name} {r.value:.3g}" for name, r in results.items())
    # fake CUDA: the per-batch device work; the float reductions and CLIPScore's processor (PIL, on the
    # host inside torchmetrics) run in the real-device run
    out = {}
    for name, metric in suite.metrics.items():
        if hasattr(metric, "pair_fn"):
            out[name] = metric.pair_fn(images, references.to(ctx.device))
    features = suite.metrics[FD_NAME].module
    fd = fd_metric(references, images, features, batch_size=2)
    out[FD_NAME] = fd.fake_features_sum
    check_on_device("metrics", ctx.device, out)
    return f"{', '.join(out)} on the device (no host read-back on fake CUDA; CLIP score on real devices)"


def path_pmg(ctx: CheckContext) -> str:
    from icg.baselines import pmg_suffix
    from icg.pipeline import CoverItem, CoverUser

    pipe = device_pipeline(ctx)
    items = [CoverItem(t, im) for t, im in zip(["Heat", "Toy Story"], device_images(2), strict=True)]
    suffixes = [pmg_suffix(["horror", "night"]), pmg_suffix(["cartoon"])]
    with device_mllm(ctx, pipe):
        out = pipe(
            items, [CoverUser(user_id="1"), CoverUser(user_id="2")], num_inference_steps=2, output_type="pt",
            max_prompt_tokens=4, adapter_scale=0.0, prompt_suffixes=suffixes,
        )  # fmt: skip
    check_on_device("PMG covers", ctx.device, {"images": out.images})
    return f"{len(out.images)} covers with preference keywords, adapter off"


def path_textual_inversion(ctx: CheckContext) -> str:
    """A Textual Inversion step (real run: two training steps, the words saved, loaded with diffusers and
    generated with); fake CUDA: the step's loss."""
    from diffusers import DDPMScheduler

    from icg.baselines import TextualInversionConfig, ti_suffix, train_user_tokens, user_tokens
    from icg.baselines.textual_inversion import TokenBatch, cover_posteriors, step_loss
    from icg.pipeline import CoverItem, CoverUser

    pipe = device_pipeline(ctx)
    size = pipe.default_size
    gen = torch.Generator().manual_seed(0)
    users = {u: torch.randint(0, 256, (1, 3, size, size), dtype=torch.uint8, generator=gen) for u in "12"}
    config = TextualInversionConfig(epochs=2, batch_size=2, templates=("a poster in the style of {}",))
    if ctx.fake:  # training reads weights back (fingerprint), steps backward and logs floats: the loss only
        ids = sorted(users)
        tokens = TokenBatch(pipe, ids, config)
        rows = torch.nn.ParameterList(torch.nn.Parameter(tokens.init.clone().to(ctx.device)) for _ in ids)
        owners = torch.tensor([0, 1])  # CPU: host-side index
        posteriors = cover_posteriors(pipe.vae, torch.cat([users[u] for u in ids]))
        frozen = pipe.text_encoder.get_input_embeddings().weight.detach()
        scheduler = DDPMScheduler.from_config(pipe.scheduler.config)
        loss = step_loss(pipe, tokens, rows, frozen, posteriors, owners, owners, scheduler, config, 0)
        check_on_device("textual inversion", ctx.device, {"loss": loss})
        return "step loss (forward only on fake CUDA)"
    metrics = train_user_tokens(pipe, users, ctx.work / "ti", config, progress=False)
    items = [CoverItem("Heat", device_images(1)[0])]
    with user_tokens(pipe, ctx.work / "ti", ["1"]), device_mllm(ctx, pipe):
        out = pipe(
            items, [CoverUser(user_id="1")], num_inference_steps=2, output_type="pt", max_prompt_tokens=4,
            adapter_scale=0.0, prompt_suffixes=[ti_suffix("1")],
        )  # fmt: skip
    check_on_device("textual inversion covers", ctx.device, {"images": out.images})
    return f"{metrics['steps_completed']} steps, words loaded, 1 cover"


def path_mmgcn(ctx: CheckContext) -> str:
    """MMGCN with a visual modality and user features: BPR loss and full-ranking scores (real run: two
    epochs of `train_mmgcn` and `evaluate`). Sparse tensors cannot be fake: the fake run passes the same
    adjacency dense (torch.sparse.mm takes both)."""
    from icg.recsys.mmgcn import (
        MMGCN,
        MMGCNConfig,
        MMGCNTrainConfig,
        evaluate,
        interaction_mask,
        normalized_adjacency,
        train_mmgcn,
    )

    gen = torch.Generator().manual_seed(0)
    n_users, n_items = 4, 6
    users, items = np.array([0, 0, 1, 2, 3, 3]), np.array([0, 1, 2, 3, 4, 5])
    config = MMGCNConfig(n_users, n_items, dim=8, layers=2, item_feature_dim=5, user_feature_dim=3)
    model = MMGCN(config, torch.rand(n_items, 5, generator=gen), torch.rand(n_users, 3, generator=gen))
    model.to(ctx.device)
    if ctx.fake:
        adjacency = normalized_adjacency(torch.as_tensor(users), torch.as_tensor(items), n_users, n_items)
        adjacency = adjacency.to_dense().to(ctx.device)
        index = torch.tensor([0, 1], device=ctx.device)
        loss = model.bpr_loss(adjacency, index, index, index + 2, 1e-4)
        check_on_device("MMGCN", ctx.device, {"loss": loss, "scores": model.scores(adjacency)})
        return "BPR loss and scores (dense adjacency, forward only on fake CUDA)"
    val = interaction_mask(np.array([1, 2]), np.array([0, 1]), n_users, n_items)
    result = train_mmgcn(
        model, users, items, val, MMGCNTrainConfig(max_epochs=2, eval_every=1, k=3), progress=False
    )
    seen = interaction_mask(users, items, n_users, n_items)
    ranked = evaluate(result.model, users, items, seen, val, k=3)
    return f"2 epochs, val recall {ranked.mean()['recall']:.3g}"


def path_batch_stage(ctx: CheckContext) -> str:
    """The batch job's generation stage: covers from host arrays (P_exp, C_ref, centroids); the real run
    also encodes and writes them."""
    from icg.batch.stages import GenerateStage

    pipe = device_pipeline(ctx)
    stage = object.__new__(GenerateStage)  # the stage with the checked pipeline instead of loading its own
    stage.pipe, stage.steps, stage.guidance, stage.adapter_scale = pipe, 2, 7.0, None
    stage.out_dir, stage.fmt, stage.preset = str(ctx.work / "batch"), "png", "tiny"
    n_meta, width = pipe.context_encoder.num_meta_tokens, pipe.context_encoder.hidden_size
    stage.centroids = torch.zeros(3, pipe.user_encoder.config.output_dim)  # CPU, as the stage holds them
    batch = {
        "item_id": np.array(["1", "2"], dtype=object), "folder": np.array(["1", "2"], dtype=object),
        "title": np.array(["Heat", "Psycho"], dtype=object),
        "prompt": np.array(["a poster", "a film"], dtype=object),
        "context": list(np.zeros((2, n_meta, width), dtype=np.float32)), "segment": np.array([0, 2]),
        "seed": np.array([0, 1]),
    }  # fmt: skip
    if ctx.fake:
        covers = stage.covers(batch)
        check_on_device("batch covers", ctx.device, {"covers": covers})
        return f"{len(covers)} covers (not encoded on fake CUDA)"
    manifest = stage(batch)
    return f"{len(manifest)} covers written"


MORE_PATHS: dict[str, Callable[[CheckContext], str]] = {
    "public rewards (HPSv2, PickScore, CLIP, aesthetic)": path_public_rewards,
    "reward-hacking guard (judges, held-out scores)": path_guard,
    "evaluation metrics (SSIM, LPIPS-/FD-/CLIP score-miniCLIP)": path_metrics,
    "PMG baseline": path_pmg,
    "Textual Inversion baseline": path_textual_inversion,
    "MMGCN": path_mmgcn,
    "batch generation stage": path_batch_stage,
}
