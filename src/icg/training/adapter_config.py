"""The adapter trainer's configuration (`AdapterTrainConfig`, saved beside every checkpoint) and how a preset
sets its sampling fields; read by the trainer (`icg.training.adapter`) and by both training steps."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass

from icg.backbones import backbone_kind
from icg.training import loop
from icg.training.guard import GuardRule

STAGES = ("init", "reward")
# what the CLIP reward compares a cover with: the item's explicit prompt (the paper), or — a DIAGNOSTIC that
# is never shipped — "a {genre} movie" for the sample user's most-liked genre of the item: it optimises the
# personalization benchmark's own measure, to learn whether adapter + backbone can show a user lean at all
CLIP_TEXTS = ("prompt", "user_genre")
PRECISIONS = ("no", "fp16", "bf16")
# reward name in the `rewards` mapping → the config field holding its λ
REWARD_WEIGHTS = {
    "hpsv2": "lambda_hps", "personalized": "lambda_per", "pickscore": "lambda_pick", "clip": "lambda_rec",
}  # fmt: skip
# fields that may differ between a checkpoint and the run resuming it (they change no trained value)
RESUMABLE_CHANGES = ("steps", "checkpoint_every", "sample_every", "keep_checkpoints", "num_sample_covers",
                     "guard_every", "guard_min_t", "guard_min_effect", "guard_min_falling", "guard_patience",
                     "guard_stop", "reward_speed")  # fmt: skip


@dataclass(frozen=True)
class AdapterTrainConfig(loop.JsonConfig):
    """One adapter training run (saved as adapter_train_config.json beside every checkpoint)."""

    stage: str = "reward"  # "init": CLIP reconstruction only; "reward": the weighted rewards
    steps: int = 1000  # optimizer steps
    batch_size: int = 4  # per process and micro-step
    lr: float = 1e-4  # AdamW
    weight_decay: float = 1e-2
    warmup_steps: int = 0  # linear warm-up, then constant
    grad_clip: float = 1.0  # max grad norm; 0 = off
    num_inference_steps: int = 15  # DDIM steps of a training rollout
    guidance_scale: float = 1.0  # paper: 1.0 (no CFG while training); Flux: its embedded guidance
    grad_steps: int = 1  # K: denoising steps with gradients (ReFL/DRaFT-K)
    stop_window: int = 4  # the stop step is drawn from the last `stop_window` steps (ReFL: the last quarter)
    lambda_hps: float = 0.25
    lambda_per: float = 0.25
    lambda_pick: float = 0.25
    lambda_rec: float = 0.25  # CLIP reconstruction (image ↔ caption); the only term of stage "init"
    denoise_weight: float = 0.0  # ε-MSE on reference-cover latents (ReFL's pre-training loss); 0 = off
    # the personalized reward minus its mean over the batch's other users (icg.rewards.user_contrast)
    personal_contrast: bool = False
    # G > 1: each sample comes with G − 1 other users of its item, the same noise for the G covers, and the
    # personalized reward becomes the swap form: own cover − the item's other covers, judged for the user
    users_per_item: int = 1
    clip_text: str = "prompt"  # CLIP_TEXTS; "user_genre" is a diagnostic, never a shipped recipe
    max_prompt_tokens: int = 77  # explicit prompt length (the preset's explicit_prompt_tokens)
    mixed_precision: str = "no"
    gradient_accumulation_steps: int = 1
    gradient_checkpointing: bool = True
    reward_speed: bool = True  # icg.rewards.fast on CUDA (bf16 towers, text caches, …); False: eager fp32
    checkpoint_every: int = 100
    sample_every: int = 100  # grid of sample covers every M steps; 0 = never
    keep_checkpoints: int = 2
    num_sample_covers: int = 4
    # reward-hacking guard (icg.training.guard): held-out judges every `guard_every` steps; 0 = off
    guard_every: int = 0
    guard_min_t: float = 2.0  # |paired t| vs the step-0 check for a change to count
    guard_min_effect: float = 0.1  # |mean change| / the step-0 spread over samples for a change to count
    guard_min_falling: int = 1  # judges that must fall while the training reward rises to flag a check
    guard_patience: int = 2  # flagged checks in a row that stop the run when `guard_stop`
    guard_stop: bool = False  # False: warn only
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {self.stage!r}")
        if self.clip_text not in CLIP_TEXTS:
            raise ValueError(f"clip_text must be one of {CLIP_TEXTS}, got {self.clip_text!r}")
        if self.mixed_precision not in PRECISIONS:
            raise ValueError(f"mixed_precision must be one of {PRECISIONS}, got {self.mixed_precision!r}")
        positive = ("steps", "batch_size", "num_inference_steps", "grad_steps", "stop_window")
        positive += ("max_prompt_tokens", "gradient_accumulation_steps", "checkpoint_every")
        positive += ("keep_checkpoints", "num_sample_covers", "users_per_item")
        for name in (*positive, "warmup_steps", "sample_every", "guard_every", "seed"):
            value, low = getattr(self, name), int(name in positive)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        for name in ("gradient_checkpointing", "guard_stop", "personal_contrast"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        self.guard_rule()  # validates the guard fields
        numbers = ("lr", "weight_decay", "grad_clip", "guidance_scale", "denoise_weight")
        for name in (*numbers, *REWARD_WEIGHTS.values()):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.lr == 0:
            raise ValueError("lr must be > 0")
        if self.batch_size % self.users_per_item:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a multiple of users_per_item ({self.users_per_item})"
            )
        if self.users_per_item > 1 and self.personal_contrast:
            raise ValueError("users_per_item > 1 already contrasts users (swap form): drop personal_contrast")
        n = self.num_inference_steps
        if self.stop_window > n:
            raise ValueError(f"stop_window {self.stop_window} exceeds num_inference_steps {n}")
        if self.grad_steps > n - self.stop_window + 1:
            raise ValueError(
                f"grad_steps {self.grad_steps} do not fit before the earliest stop step: need grad_steps <= "
                f"num_inference_steps - stop_window + 1 = {n - self.stop_window + 1}"
            )
        if not self.reward_weights():
            what = "lambda_rec" if self.stage == "init" else f"one of {list(REWARD_WEIGHTS.values())}"
            raise ValueError(f"stage {self.stage!r} has no reward to optimise: set {what} > 0")

    def reward_weights(self) -> dict[str, float]:
        """λ of every enabled reward (name as in the `rewards` mapping); stage "init": CLIP only."""
        if self.stage == "init":
            return {"clip": float(self.lambda_rec)} if self.lambda_rec > 0 else {}
        return {n: float(getattr(self, f)) for n, f in REWARD_WEIGHTS.items() if getattr(self, f) > 0}

    def guard_rule(self) -> GuardRule:
        return GuardRule(
            self.guard_min_t,
            self.guard_min_effect,
            self.guard_min_falling,
            self.guard_patience,
            self.guard_stop,
        )

    def run_key(self) -> str:
        """Hash of the fields a resumed run must share with its checkpoint."""
        core = {k: v for k, v in dataclasses.asdict(self).items() if k not in RESUMABLE_CHANGES}
        return hashlib.sha256(json.dumps(core, sort_keys=True).encode()).hexdigest()


def config_for_preset(config: AdapterTrainConfig, spec) -> AdapterTrainConfig:
    """The training rollout samples as the preset generates: its explicit-prompt length, and where the config
    keeps its defaults, the preset's step count and — for Flux, whose guidance is an input of the model, not
    CFG — its embedded guidance (SD1.5 trains without CFG, guidance 1.0, as the paper does)."""
    defaults, generation = AdapterTrainConfig(), spec.generation_config()
    changes: dict[str, object] = {
        "max_prompt_tokens": min(config.max_prompt_tokens, generation.max_prompt_tokens)
    }
    if config.num_inference_steps == defaults.num_inference_steps:
        changes["num_inference_steps"] = generation.num_inference_steps
    if backbone_kind(spec) == "flux" and config.guidance_scale == defaults.guidance_scale:
        changes["guidance_scale"] = generation.guidance_scale
    return dataclasses.replace(config, **changes)
