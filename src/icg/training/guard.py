"""Reward-hacking guard: held-out judges watch what the optimised rewards cannot see.

Reward feedback can raise a reward by exploiting its model (ReFL and DRaFT both report it; the first mini
adapter at lr 1e-3 turned covers into colour blobs while its CLIP reward doubled). The guard scores a fixed
held-out set of (item, user) samples — users and items the adapter never trains on, fixed noise — every
`guard_every` steps, with
- the *training reward*: the run's own weighted objective on those covers (per sample, Σ λ·(−loss)), and
- *judges* it never optimises: a personalized reward model of another seed and user split, SSIM to the
  reference cover, LPIPS-miniCLIP (or LPIPS) to the reference.
Each check compares every score with the first check (step 0, before any update) by a paired t-statistic over
the samples (the same covers' noise, so the pairing removes the sample-to-sample spread). A change *counts*
when it is significant (|t| ≥ `min_t`) and not negligible (|mean change| ≥ `min_effect` × the step-0 spread
of that score over the samples: fixed noise makes even a tiny drift significant). A check is *flagged* when
the training reward rose while at least `min_falling` judges fell (in their better direction). Flagged
checks are logged as warnings; with `stop`, `patience` flagged checks in a row end the run (checkpoint saved,
resumable).
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from icg.rewards.base import Reward
from icg.rewards.personalized import reward_text

logger = logging.getLogger(__name__)

TRAIN = "train_reward"


@dataclass(frozen=True)
class JudgeInputs:
    """What a judge may read about the held-out covers (all per sample, B of each)."""

    references: Tensor  # (B, 3, S, S) uint8 reference covers
    titles: list[str]
    prompts: list[str]  # explicit prompts P_exp
    profiles: list[str]  # user profile sentences


class Judge(ABC):
    """A held-out measure: `__call__(images (B,3,H,W) in [0,1], inputs) -> (B,)`; `higher_is_better`."""

    name: str = "judge"
    higher_is_better: bool = True

    def to(self, device: torch.device) -> Judge:
        return self

    @abstractmethod
    def __call__(self, images: Tensor, inputs: JudgeInputs) -> Tensor:
        """Scores (B,) of the covers."""


class RewardJudge(Judge):
    """A personalized reward model (never the optimised one) scoring (title + prompt, image, profile)."""

    def __init__(self, reward: Reward, name: str = "judge_personalized") -> None:
        self.reward, self.name = reward.eval().requires_grad_(False), name

    def to(self, device: torch.device) -> RewardJudge:
        self.reward.to(device)
        return self

    def __call__(self, images: Tensor, inputs: JudgeInputs) -> Tensor:
        texts = [reward_text(t, p) for t, p in zip(inputs.titles, inputs.prompts, strict=True)]
        return self.reward.score(images, texts, inputs.profiles, grad=False)


class SsimJudge(Judge):
    """SSIM of each cover to its reference: fidelity to the item (higher is better)."""

    name = "ssim"

    def __call__(self, images: Tensor, inputs: JudgeInputs) -> Tensor:
        from icg.measures.perceptual import ssim_per_image

        # on the CPU by design: SSIM's Gaussian windows are cheap, the references live on the host
        return ssim_per_image(images.float().cpu(), inputs.references)


class PerceptualJudge(Judge):
    """A perceptual distance to the reference (LPIPS-miniCLIP for the mini; lower is better)."""

    higher_is_better = False

    def __init__(self, distance: torch.nn.Module, name: str | None = None) -> None:
        self.distance = distance
        self.name = name or getattr(distance, "name", "perceptual")

    def to(self, device: torch.device) -> PerceptualJudge:
        self.distance.to(device)
        return self

    def __call__(self, images: Tensor, inputs: JudgeInputs) -> Tensor:
        device = next(self.distance.parameters()).device
        return self.distance(images.float().to(device), inputs.references.to(device))


def default_judges(judge_reward: str | None, clip: str | None) -> list[Judge]:
    """The mini/real preset's judges: the held-out reward model (when the preset has one), SSIM, and
    LPIPS-miniCLIP on the preset's CLIP (when it has one)."""
    from icg.rewards import load_reward

    judges: list[Judge] = []
    if judge_reward is not None:
        judges.append(RewardJudge(load_reward("personalized", judge_reward)))
    else:
        logger.warning("the preset has no held-out reward model (reward_judge): the guard judges fidelity")
    judges.append(SsimJudge())
    if clip is not None:
        from transformers import CLIPModel

        from icg.measures.perceptual import ClipPerceptualDistance

        judges.append(PerceptualJudge(ClipPerceptualDistance(CLIPModel.from_pretrained(clip))))
    return judges


@torch.no_grad()
def held_out_batch(step_fn, judges: Sequence[Judge], rows: Tensor) -> dict[str, Tensor]:
    """Covers of the held-out samples `rows` (fixed noise, full DDIM) scored by the training objective and
    every judge → {TRAIN | judge name: (B,) scores}, each on the device its scorer computed it on."""
    data = step_fn.data
    prompts, images = step_fn.sample(rows, "guard")
    scores = {TRAIN: step_fn.objective_per_sample(rows, prompts, images)}
    users, items = data.samples[rows].unbind(1)  # CPU: the held-out data's index table
    inputs = JudgeInputs(
        references=data.covers[items],
        titles=[data.titles[i] for i in items.tolist()],
        prompts=prompts,
        profiles=[data.profiles[u] for u in users.tolist()],
    )
    for judge in judges:
        scores[judge.name] = judge(images, inputs)
    return scores


@torch.no_grad()
def held_out_scores(step_fn, judges: Sequence[Judge], batch_size: int) -> dict[str, list[float]]:
    """`held_out_batch` over every held-out sample, read back to the host as floats; `step_fn` is an
    `AdapterStep` over the held-out `AdapterData` → {TRAIN | judge name: B floats}."""
    data = step_fn.data
    scores: dict[str, list[float]] = {TRAIN: [], **{j.name: [] for j in judges}}
    for start in range(0, len(data), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(data)))  # CPU by design: indexes host data
        for name, values in held_out_batch(step_fn, judges, rows).items():
            scores[name] += values.float().cpu().tolist()
    return scores


# ------------------------------------------------------------------------------------------- the verdict
def paired_t(after: Sequence[float], before: Sequence[float]) -> float:
    """t-statistic of the mean paired difference after − before (0 when the differences have no spread
    and no mean, ±inf when they have a mean and no spread)."""
    if len(after) != len(before) or len(after) < 2:
        raise ValueError(f"paired_t needs two equal samples of >= 2, got {len(after)} and {len(before)}")
    # CPU by design: the verdict works on host floats already read back from the device
    diff = torch.tensor(after, dtype=torch.float64) - torch.tensor(before, dtype=torch.float64)
    mean, std = float(diff.mean()), float(diff.std())
    if std == 0.0:
        return 0.0 if mean == 0.0 else math.copysign(math.inf, mean)
    return mean / (std / math.sqrt(len(diff)))


@dataclass(frozen=True)
class GuardRule:
    """When a check is flagged, and when flagged checks stop the run."""

    min_t: float = 2.0  # |paired t| for a change to count
    min_effect: float = 0.1  # |mean change| / step-0 std over the samples for a change to count
    min_falling: int = 1  # judges that must fall while the training reward rises
    patience: int = 2  # flagged checks in a row that stop the run (with `stop`)
    stop: bool = False

    def __post_init__(self) -> None:
        for name in ("min_t", "min_effect"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value < math.inf:
                raise ValueError(f"guard {name} must be a finite number >= 0, got {value!r}")
        for name in ("min_falling", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"guard {name} must be an integer >= 1, got {value!r}")


@dataclass
class GuardMonitor:
    """The checks so far (JSON-ready, restored on resume) and the verdict of each against the first."""

    rule: GuardRule
    directions: Mapping[str, bool]  # judge name → higher_is_better
    checks: list[dict] = field(default_factory=list)

    def record(self, step: int, scores: Mapping[str, Sequence[float]]) -> dict:
        """Add the check at `step` (scores: TRAIN and every judge, per sample) → its verdict record."""
        missing = sorted({TRAIN, *self.directions} - set(scores))
        if missing:
            raise ValueError(f"guard check at step {step} lacks scores for {missing}")
        check = {"step": step, "scores": {k: [float(v) for v in vals] for k, vals in scores.items()}}
        check["means"] = {k: sum(v) / len(v) for k, v in check["scores"].items()}
        check |= self._verdict(check)
        self.checks.append(check)
        if check["flagged"]:
            first = self.checks[0]
            changes = ", ".join(
                f"{k} {first['means'][k]:.4g} → {check['means'][k]:.4g} (t {check['t'][k]:+.1f})"
                for k in (TRAIN, *check["falling"])
            )
            logger.warning("reward hacking suspected at step %d: training reward rose while held-out "
                           "judges fell: %s", step, changes)  # fmt: skip
        return check

    def _verdict(self, check: dict) -> dict:
        if not self.checks:  # the baseline
            return {"t": {}, "rising": False, "falling": [], "flagged": False, "flagged_in_a_row": 0}
        first = self.checks[0]["scores"]
        t = {k: paired_t(v, first[k]) for k, v in check["scores"].items() if k in first}

        def moved(name: str, sign: float) -> bool:
            """Did score `name` change in direction `sign`, significantly and not negligibly?"""
            base = torch.tensor(first[name], dtype=torch.float64)  # host floats (CPU by design)
            change = sign * (check["means"][name] - float(base.mean()))
            big = change > 0 and change >= self.rule.min_effect * float(base.std())
            return big and sign * t[name] >= self.rule.min_t

        rising = moved(TRAIN, 1.0)
        falling = sorted(k for k, up in self.directions.items() if moved(k, -1.0 if up else 1.0))
        flagged = rising and len(falling) >= self.rule.min_falling
        in_a_row = self.checks[-1]["flagged_in_a_row"] + 1 if flagged else 0
        return {"t": t, "rising": rising, "falling": falling, "flagged": flagged,
                "flagged_in_a_row": in_a_row}  # fmt: skip

    @property
    def should_stop(self) -> bool:
        latest = self.checks[-1]["flagged_in_a_row"] if self.checks else 0
        return bool(self.rule.stop and latest >= self.rule.patience)

    def summary(self) -> dict:
        """Means per check and the flags, for metrics.json (per-sample scores stay in the trainer state)."""
        return {
            "rule": {"min_t": self.rule.min_t, "min_effect": self.rule.min_effect,
                     "min_falling": self.rule.min_falling,
                     "patience": self.rule.patience, "stop": self.rule.stop},
            "judges": {k: ("higher" if up else "lower") + " is better" for k, up in self.directions.items()},
            "checks": [{k: c[k] for k in ("step", "means", "t", "flagged", "falling")} for c in self.checks],
            "flagged_steps": [c["step"] for c in self.checks if c["flagged"]],
            "stopped": self.should_stop,
        }  # fmt: skip


def guard_markdown(summary: dict) -> str:
    """The guard's checks (metrics.json "guard") as a Markdown table: means, paired t vs step 0, flags."""
    judges = list(summary["judges"])
    head = [TRAIN, *judges]
    arrow = {k: "↑" if v.startswith("higher") else "↓" for k, v in summary["judges"].items()}
    lines = [
        "| step | " + " | ".join(f"{k} {arrow.get(k, '↑')}" for k in head) + " | flagged | falling |",
        "|---:|" + "---:|" * len(head) + "---|---|",
    ]
    for check in summary["checks"]:
        cells = []
        for k in head:
            t = check["t"].get(k)
            cells.append(f"{check['means'][k]:.4g}" + ("" if t is None else f" (t {t:+.1f})"))
        flag = "**yes**" if check["flagged"] else ""
        lines.append(
            f"| {check['step']} | " + " | ".join(cells) + f" | {flag} | {', '.join(check['falling'])} |"
        )
    rule = summary["rule"]
    lines.append("")
    lines.append(
        f"Rule: a change counts when |paired t| ≥ {rule['min_t']} and |mean change| ≥ {rule['min_effect']} × "
        f"the step-0 spread; flagged when the training reward rises while ≥ {rule['min_falling']} judge(s) "
        "fall; "
        + (f"stop after {rule['patience']} flagged checks in a row." if rule["stop"] else "warn only.")
        + (" **Stopped by the guard.**" if summary["stopped"] else "")
    )
    return "\n".join(lines) + "\n"
