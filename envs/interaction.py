"""Exploration policies for world-model interaction data, policy mixtures, and the planning-variation guard.

A world model trained only on expert demonstrations never sees what a wrong action does. These policies make the
other episodes (`envs.demos.collect_demos(..., policy=...)`, `experiments/collect_metaworld.py --policy`):

* ``expert``: Meta-World's scripted policy (`envs.metaworld.expert_policy`), unchanged.
* ``noisy``: the expert's action plus Gaussian noise (``noise_std``) on all four dimensions; with probability
  ``random_prob`` per step it instead starts a uniform random action in [-1, 1]^4 held for k steps
  (k uniform in ``hold_min..hold_max``), after which the noisy expert takes over again.
* ``random``: a uniform action in [-1, 1]^4 held for k steps (k uniform in ``hold_min..hold_max``), then another.
  Holding an action moves the hand several centimetres, which single-step uniform noise (mean zero) does not.

Every policy is ``policy(state [39]) -> action float32 [4]`` in [-1, 1]; the stochastic ones draw only from the
numpy Generator they are given, so an episode's actions are a function of its seed (`episode_rng`).

A mixture such as ``expert:0.2,noisy:0.4,random:0.4`` gives the fraction of each task's episodes per policy. The
policy of an episode depends only on its variation index and the mixture (`PolicyMixture.policy_of`), so a
resumed or enlarged collection gives the same policy to the same episode: variations are dealt in blocks of 10
(each block holds exactly one test variation of the ``v % 10 == 9`` split), every block's policies are apportioned
so that the counts after each block are within one episode of the requested fractions (exact for 40 episodes of
``expert:0.2,noisy:0.4,random:0.4``), and then shuffled within the block so that the test variations are not all
given to one policy.

Goal variations used by the planning benchmark start at `PLANNING_VARIATION_START` (`planning_variations`);
collection refuses them (`check_training_variation`), so no training episode ever shows a benchmark goal.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = [
    "PLANNING_VARIATION_START",
    "planning_variations",
    "check_training_variation",
    "POLICIES",
    "PolicyConfig",
    "PolicyMixture",
    "RandomPolicy",
    "NoisyExpertPolicy",
    "make_policy",
    "episode_rng",
    "count_policies",
]

PLANNING_VARIATION_START = 10_000  # variations >= this are planning-benchmark goals: never in training data
POLICIES: tuple[str, ...] = ("expert", "noisy", "random")
ACTION_DIM = 4  # as envs.metaworld.ACTION_DIM; not imported so that this module loads without MuJoCo
_BLOCK = 10  # variations per apportioning block: one split period of envs.demos (v % 10 == 9 is test)


def planning_variations(n: int) -> list[int]:
    """The first ``n`` planning-benchmark goal variations: [10000, ..., 10000 + n - 1]."""
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return list(range(PLANNING_VARIATION_START, PLANNING_VARIATION_START + int(n)))


def check_training_variation(variation: int) -> None:
    """Raise ValueError if ``variation`` belongs to the planning benchmark (>= PLANNING_VARIATION_START)."""
    if int(variation) >= PLANNING_VARIATION_START:
        raise ValueError(
            f"variation {variation} is reserved for the planning benchmark (variations >= "
            f"{PLANNING_VARIATION_START}, see envs.interaction.planning_variations); training data must not "
            f"contain benchmark goals: collect fewer than {PLANNING_VARIATION_START} episodes per task")


# --------------------------------------------------------------------------------------------- policies


@dataclass(frozen=True)
class PolicyConfig:
    """Parameters of the exploration policies (the expert has none)."""

    noise_std: float = 0.3  # noisy: std of the Gaussian added to each expert action dimension
    random_prob: float = 0.1  # noisy: probability per step of starting a held random action
    hold_min: int = 1  # noisy and random: a random action is held k steps, k uniform in hold_min..hold_max
    hold_max: int = 5

    def __post_init__(self) -> None:
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0 <= self.random_prob <= 1:
            raise ValueError(f"random_prob must be in [0, 1], got {self.random_prob}")
        if not 1 <= self.hold_min <= self.hold_max:
            raise ValueError(f"need 1 <= hold_min <= hold_max, got hold_min={self.hold_min}, "
                             f"hold_max={self.hold_max}")

    def params(self, policy: str) -> dict:
        """The parameters that ``policy`` uses (recorded with each episode)."""
        d = asdict(self)
        if policy == "noisy":
            return d
        if policy == "random":
            return {"hold_min": d["hold_min"], "hold_max": d["hold_max"]}
        return {}


class _HeldUniform:
    """A uniform action in [-1, 1]^4 repeated for k steps (k uniform in hold_min..hold_max)."""

    def __init__(self, hold_min: int, hold_max: int, rng: np.random.Generator):
        self.hold_min, self.hold_max, self.rng = int(hold_min), int(hold_max), rng
        self.action: np.ndarray | None = None
        self.left = 0  # steps the current action is still held

    def start(self) -> None:
        self.action = self.rng.uniform(-1.0, 1.0, ACTION_DIM).astype(np.float32)
        self.left = int(self.rng.integers(self.hold_min, self.hold_max + 1))

    def next(self) -> np.ndarray:
        self.left -= 1
        return self.action.copy()


class RandomPolicy:
    """Uniform actions in [-1, 1]^4, each held for k steps with k uniform in ``hold_min..hold_max``."""

    def __init__(self, *, rng: np.random.Generator, hold_min: int = 1, hold_max: int = 5):
        self._held = _HeldUniform(hold_min, hold_max, rng)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        if self._held.left <= 0:
            self._held.start()
        return self._held.next()


class NoisyExpertPolicy:
    """The scripted expert with Gaussian action noise and occasional held random actions (see module doc)."""

    def __init__(self, expert: Callable[[np.ndarray], np.ndarray], *, rng: np.random.Generator,
                 noise_std: float = 0.3, random_prob: float = 0.1, hold_min: int = 1, hold_max: int = 5):
        self.expert, self.rng = expert, rng
        self.noise_std, self.random_prob = float(noise_std), float(random_prob)
        self._held = _HeldUniform(hold_min, hold_max, rng)

    def __call__(self, state: np.ndarray) -> np.ndarray:
        if self._held.left <= 0 and self.rng.random() < self.random_prob:
            self._held.start()
        if self._held.left > 0:
            return self._held.next()
        # skipping the expert during a hold is safe: the scripted policies are functions of the state only
        action = np.asarray(self.expert(state), np.float64) + self.noise_std * self.rng.standard_normal(ACTION_DIM)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


def make_policy(name: str, task: str, config: PolicyConfig, rng: np.random.Generator | None,
                expert: Callable[[np.ndarray], np.ndarray] | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """Policy ``name`` for ``task``; ``expert`` reuses an already built scripted policy of that task."""
    if name not in POLICIES:
        raise ValueError(f"unknown policy {name!r}; expected one of {list(POLICIES)}")
    if name == "random":
        return RandomPolicy(rng=rng, hold_min=config.hold_min, hold_max=config.hold_max)
    if expert is None:
        from envs.metaworld import expert_policy

        expert = expert_policy(task)
    if name == "expert":
        return expert
    return NoisyExpertPolicy(expert, rng=rng, **config.params("noisy"))


def episode_rng(seed: int, task: str, variation: int) -> np.random.Generator:
    """The Generator of one episode's policy: a function of (seed, task, variation) only, not of the worker."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), zlib.crc32(task.encode()), int(variation)]))


# --------------------------------------------------------------------------------------------- mixtures


@dataclass(frozen=True)
class PolicyMixture:
    """Fractions of episodes per policy, e.g. ``PolicyMixture.parse("expert:0.2,noisy:0.4,random:0.4")``."""

    fractions: tuple[tuple[str, float], ...]  # (policy, fraction > 0) in POLICIES order, summing to 1

    @classmethod
    def parse(cls, spec: str) -> "PolicyMixture":
        """'expert', 'noisy', 'random' or 'name:fraction,...' (fractions > 0 summing to 1)."""
        parts = [p.strip() for p in str(spec).split(",") if p.strip()]
        if not parts:
            raise ValueError("empty policy spec; expected e.g. 'random' or 'expert:0.2,noisy:0.4,random:0.4'")
        out: dict[str, float] = {}
        for part in parts:
            name, sep, frac = part.partition(":")
            name = name.strip()
            if name not in POLICIES:
                raise ValueError(f"unknown policy {name!r} in {spec!r}; expected names from {list(POLICIES)}")
            if name in out:
                raise ValueError(f"policy {name!r} appears twice in {spec!r}")
            if not sep and len(parts) > 1:
                raise ValueError(f"policy {name!r} in {spec!r} needs a fraction (name:fraction)")
            try:
                f = float(frac) if sep else 1.0
            except ValueError:
                raise ValueError(f"fraction {frac!r} of policy {name!r} is not a number") from None
            if not 0 < f <= 1:
                raise ValueError(f"fraction of policy {name!r} must be in (0, 1], got {frac}")
            out[name] = f
        total = sum(out.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"policy fractions in {spec!r} sum to {total:g}, expected 1")
        return cls(tuple((n, out[n]) for n in POLICIES if n in out))

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.fractions)

    def __str__(self) -> str:
        """Canonical spec: one name if pure, else 'name:fraction,...' in POLICIES order."""
        if len(self.fractions) == 1:
            return self.fractions[0][0]
        return ",".join(f"{n}:{f:g}" for n, f in self.fractions)

    def assign(self, n: int) -> list[str]:
        """The policies of variations 0..n-1 (a prefix of the same infinite sequence for every n)."""
        blocks = -(-int(n) // _BLOCK)
        names = [name for name, _ in self.fractions]
        quota = np.array([f for _, f in self.fractions])
        counts = np.zeros(len(names))
        out: list[str] = []
        seed = zlib.crc32(str(self).encode())
        for b in range(blocks):
            block = []
            for i in range(b * _BLOCK, (b + 1) * _BLOCK):
                # largest deficit first: every running count stays within one episode of its quota
                k = int(np.argmax(quota * (i + 1) - counts))
                counts[k] += 1
                block.append(names[k])
            np.random.default_rng([seed, b]).shuffle(block)
            out.extend(block)
        return out[:n]

    def policy_of(self, variation: int) -> str:
        return self.assign(int(variation) + 1)[-1]


def count_policies(policies: Sequence[str]) -> dict[str, int]:
    return {n: sum(p == n for p in policies) for n in POLICIES if n in policies}
