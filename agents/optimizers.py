"""Trajectory optimisers that know nothing of models or environments.

Axis legend::

    N  candidate action sequences evaluated together (the population)
    H  planning horizon (distinct actions the optimiser searches over)
    A  action dimension          K  elites

An optimiser minimises a black-box ``objective(actions [N, H, A]) -> cost [N]`` (lower is better) inside box
bounds ``action_low <= a <= action_high`` (tensors ``[A]``). Every optimiser is seedable: the same ``seed`` (or a
``torch.Generator`` in the same state) gives the same plan. Each ``optimize`` returns a `PlanResult` with the best
sequence it evaluated, its cost (= the lowest cost evaluated = ``min(iteration_costs)``) and the number of objective
evaluations spent. No sequence is scored twice in one ``optimize`` call (warm start, carried elites).

`TrajectoryPlanner` wraps any optimiser for closed-loop use: fixed horizon, action repeat (H/r distinct actions,
each held r steps) and warm start from the previous plan shifted by the replan interval.

    opt = CEM(num_samples=200, iterations=3, elite_frac=0.05)
    res = opt.optimize(lambda a: (a - 0.3).pow(2).sum((1, 2)), horizon=10,
                       action_low=-torch.ones(4), action_high=torch.ones(4), seed=0)
    res.actions  # [10, 4]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

Objective = Callable[[Tensor], Tensor]

__all__ = [
    "PlanResult", "Optimizer", "RandomShooting", "CEM", "ICEM", "MPPI", "TrajectoryPlanner",
    "colored_noise", "make_optimizer",
]


@dataclass
class PlanResult:
    """What an optimiser found.

    actions: ``[H, A]`` the chosen sequence (inside the bounds).  cost: its objective value.
    num_evaluations: candidate sequences passed to the objective.  iteration_costs: best cost seen per iteration.
    elites: ``[K, H, A]`` the last elites, lowest cost first (for carry-over into the next plan); may be empty.
    """

    actions: Tensor
    cost: float
    num_evaluations: int
    iteration_costs: list[float] = field(default_factory=list)
    elites: Tensor | None = None


def colored_noise(shape: tuple[int, ...], beta: float, *, generator: torch.Generator | None = None,
                  device: torch.device | str = "cpu") -> Tensor:
    """Gaussian noise with power spectrum ~ 1/f^beta along the LAST axis, unit variance per element.

    beta = 0 is white noise; beta = 2 (iCEM's default) is strongly correlated in time ("red" noise), which
    explores smooth action sequences instead of jitter that averages out over the horizon.
    """
    if beta == 0:
        return torch.randn(shape, generator=generator, device=device)
    n = shape[-1]
    if n < 2:
        return torch.randn(shape, generator=generator, device=device)
    freqs = torch.fft.rfftfreq(n, device=device)  # [n//2 + 1]
    freqs[0] = 1.0 / n  # the DC term gets the weight of the lowest real frequency instead of infinity
    scale = freqs.pow(-beta / 2.0)
    real = torch.randn((*shape[:-1], freqs.numel()), generator=generator, device=device) * scale
    imag = torch.randn((*shape[:-1], freqs.numel()), generator=generator, device=device) * scale
    imag[..., 0] = 0.0  # the DC and (for even n) Nyquist bins of a real signal are real
    if n % 2 == 0:
        imag[..., -1] = 0.0
    spec = torch.complex(real, imag)
    x = torch.fft.irfft(spec, n=n)  # [..., n]
    # Normalise by the exact per-element variance of this construction, the same for every t:
    # x_t = (1/n) [X_0 + 2 sum_mid Re(X_k e^{i w_k t}) + X_nyq (-1)^t], and Re(X_k e^{i.}) has variance s_k^2.
    mid = scale[1:-1] if n % 2 == 0 else scale[1:]
    var = scale[0] ** 2 + 4 * mid.pow(2).sum() + (scale[-1] ** 2 if n % 2 == 0 else 0.0)
    var = var / n**2
    return x / var.sqrt()


def _as_bounds(action_low, action_high) -> tuple[Tensor, Tensor]:
    low = torch.as_tensor(action_low, dtype=torch.float32).flatten()
    high = torch.as_tensor(action_high, dtype=torch.float32).flatten()
    if low.shape != high.shape or low.numel() == 0:
        raise ValueError(f"action_low / action_high: expected two tensors [A] of equal shape, got {list(low.shape)} and {list(high.shape)}")
    if not bool((high > low).all()):
        raise ValueError(f"action bounds: expected action_high > action_low elementwise, got low={low.tolist()} high={high.tolist()}")
    return low, high


def _make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if generator is None:
        generator = torch.Generator()
        generator.manual_seed(0 if seed is None else int(seed))
    return generator


def _unique_rows(rows: Tensor, seen: Tensor | None = None) -> Tensor:
    """The rows of ``[K, H, A]`` that are neither repeated earlier in ``rows`` nor in ``seen [M, H, A]``, in order.

    The extra candidates (warm start, carried elites) often coincide: the shifted previous plan is the shifted best
    elite. Scoring a sequence twice spends a model rollout on a known answer."""
    if rows.shape[0] == 0:
        return rows
    flat = rows.flatten(1)  # [K, H*A]
    same = (flat[:, None] == flat[None]).all(-1).tril(-1).any(1)  # [K]: equal to an earlier row
    if seen is not None and seen.shape[0]:
        same |= (flat[:, None] == seen.flatten(1)[None]).all(-1).any(1)
    return rows[~same]


def _evaluate(objective: Objective, actions: Tensor) -> Tensor:
    cost = objective(actions)
    if not isinstance(cost, Tensor) or cost.shape != (actions.shape[0],):
        got = list(cost.shape) if isinstance(cost, Tensor) else type(cost).__name__
        raise ValueError(f"objective: expected costs [N={actions.shape[0]}] for actions {list(actions.shape)}, got {got}")
    cost = cost.detach().float().cpu()
    # A diverging model can produce NaN or +-inf; treat them as the worst cost (inf) rather than letting them
    # poison the elites. (nan_to_num's default would turn +inf into the largest float, ranking it above NaN.)
    return torch.where(torch.isfinite(cost), cost, torch.full_like(cost, float("inf")))


class Optimizer:
    """Base class: sampling with bounds, a seedable generator, evaluation bookkeeping."""

    def __init__(self, *, num_samples: int, iterations: int = 1, init_std: float | Tensor | None = None,
                 noise_beta: float = 0.0, smoothing: float = 0.0):
        if num_samples < 1 or iterations < 1:
            raise ValueError(f"num_samples and iterations must be >= 1, got {num_samples} and {iterations}")
        if not 0.0 <= smoothing < 1.0:
            raise ValueError(f"smoothing must be in [0, 1), got {smoothing}")
        self.num_samples = int(num_samples)
        self.iterations = int(iterations)
        self.init_std = init_std
        self.noise_beta = float(noise_beta)
        self.smoothing = float(smoothing)

    def _initial(self, horizon: int, low: Tensor, high: Tensor, init_mean: Tensor | None) -> tuple[Tensor, Tensor]:
        a = low.numel()
        if init_mean is None:
            mean = ((low + high) / 2).expand(horizon, a).clone()  # [H, A]
        else:
            mean = torch.as_tensor(init_mean, dtype=torch.float32).cpu()
            if mean.shape != (horizon, a):
                raise ValueError(f"init_mean: expected [{horizon}, {a}], got {list(mean.shape)}")
            mean = torch.maximum(torch.minimum(mean, high), low)
        if self.init_std is None:
            std = ((high - low) / 4).expand(horizon, a).clone()  # +-2 std covers the box
        else:
            std = torch.as_tensor(self.init_std, dtype=torch.float32).expand(horizon, a).clone()
        return mean, std

    def _noise(self, n: int, horizon: int, a: int, generator: torch.Generator) -> Tensor:
        """Zero-mean unit-variance noise [n, H, A], white, colored (1/f^beta) and/or AR(1)-smoothed in time."""
        eps = colored_noise((n, a, horizon), self.noise_beta, generator=generator).transpose(1, 2)  # [n, H, A]
        if self.smoothing > 0:
            # Stationary AR(1) with unit variance at every step: n_0 = e_0, n_t = rho n_{t-1} + sqrt(1 - rho^2) e_t
            # (the correlated noise of the control-centric video-prediction benchmark uses rho = 0.5).
            rho = self.smoothing
            out = torch.empty_like(eps)
            out[:, 0] = eps[:, 0]
            for t in range(1, horizon):
                out[:, t] = rho * out[:, t - 1] + math.sqrt(1 - rho**2) * eps[:, t]
            eps = out
        return eps

    def optimize(self, objective: Objective, *, horizon: int, action_low, action_high,
                 init_mean: Tensor | None = None, init_samples: Tensor | None = None,
                 generator: torch.Generator | None = None, seed: int | None = None) -> PlanResult:
        """Minimise ``objective`` over sequences ``[horizon, A]``.

        Args:
            objective: ``actions [N, horizon, A] -> cost [N]`` (lower is better).
            action_low / action_high: ``[A]`` box bounds (every evaluated sequence lies inside).
            init_mean: ``[horizon, A]`` warm start (e.g. the previous plan, shifted).
            init_samples: ``[K, horizon, A]`` extra candidates evaluated in the first iteration (elite carry-over).
            generator / seed: randomness (default seed 0).
        """
        low, high = _as_bounds(action_low, action_high)
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if init_samples is not None:
            init_samples = torch.as_tensor(init_samples, dtype=torch.float32).cpu()
            if init_samples.ndim != 3 or init_samples.shape[1:] != (horizon, low.numel()):
                raise ValueError(f"init_samples: expected [K, {horizon}, {low.numel()}], got {list(init_samples.shape)}")
            init_samples = torch.maximum(torch.minimum(init_samples, high), low)
        return self._optimize(objective, horizon, low, high, init_mean, init_samples, _make_generator(generator, seed))

    def _optimize(self, objective, horizon, low, high, init_mean, init_samples, generator) -> PlanResult:
        raise NotImplementedError


class RandomShooting(Optimizer):
    """Uniform random sequences in the box; keeps the best. ``iterations`` chunks the same budget (no refit).

    The warm-start mean and any ``init_samples`` (without repeats) are evaluated as extra candidates. When every
    cost is NaN / inf the first candidate (the warm start if given) is returned, with cost inf. It samples the whole
    box, so it takes no sampling std, colored noise or smoothing.
    """

    def __init__(self, *, num_samples: int, iterations: int = 1):
        super().__init__(num_samples=num_samples, iterations=iterations)

    def _optimize(self, objective, horizon, low, high, init_mean, init_samples, generator):
        a = low.numel()
        best_cost, best, evals, per_iter = float("inf"), None, 0, []
        for it in range(self.iterations):
            u = torch.rand((self.num_samples, horizon, a), generator=generator)
            samples = low + u * (high - low)  # [N, H, A]
            if it == 0:
                extra = [s for s in (None if init_mean is None else self._initial(horizon, low, high, init_mean)[0][None],
                                     init_samples) if s is not None]
                if extra:
                    samples = torch.cat([_unique_rows(torch.cat(extra)), samples])[: self.num_samples]
            cost = _evaluate(objective, samples)
            evals += samples.shape[0]
            i = int(cost.argmin())
            if best is None or float(cost[i]) < best_cost:
                best_cost, best = float(cost[i]), samples[i].clone()
            per_iter.append(best_cost)
        return PlanResult(actions=best, cost=best_cost, num_evaluations=evals, iteration_costs=per_iter,
                          elites=best[None])


class CEM(Optimizer):
    """Cross-entropy method: sample around a Gaussian, refit it to the elites, repeat.

    Args (beyond `Optimizer`'s):
        elite_frac / min_elites: K = max(elite_frac * num_samples, min_elites) (visual foresight: 5 %, >= 10).
        momentum: new = momentum * old + (1 - momentum) * elite fit (for mean and std / covariance).
        full_covariance: refit a full covariance over all H*A dims (classic visual-foresight CEM) instead of a
            per-dimension std; it captures correlations across time and action dims.
        cov_shrinkage: weight of the diagonal in the full-covariance refit (the elites alone are rank-deficient).
        min_std: floor on the std, so the search never collapses to a point before the last iteration.
        noise_beta / smoothing: colored (1/f^beta) and AR(1) temporal correlation of the sampling noise.
    """

    def __init__(self, *, num_samples: int = 200, iterations: int = 3, elite_frac: float = 0.05,
                 min_elites: int = 10, momentum: float = 0.0, full_covariance: bool = False, min_std: float = 1e-3,
                 init_std: float | Tensor | None = None, noise_beta: float = 0.0, smoothing: float = 0.0,
                 cov_shrinkage: float = 0.3):
        super().__init__(num_samples=num_samples, iterations=iterations, init_std=init_std, noise_beta=noise_beta,
                         smoothing=smoothing)
        if not 0.0 <= cov_shrinkage <= 1.0:
            raise ValueError(f"cov_shrinkage must be in [0, 1], got {cov_shrinkage}")
        self.cov_shrinkage = float(cov_shrinkage)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.elite_frac = float(elite_frac)
        self.min_elites = int(min_elites)
        self.momentum = float(momentum)
        self.full_covariance = bool(full_covariance)
        self.min_std = float(min_std)

    def num_elites(self, population: int) -> int:
        return max(2, min(population, max(int(round(self.elite_frac * population)), self.min_elites)))

    # Hooks iCEM overrides.
    def _population(self, iteration: int) -> int:
        return self.num_samples

    def _extra_candidates(self, iteration: int, mean: Tensor, prev_elites: Tensor | None,
                          init_samples: Tensor | None) -> list[Tensor]:
        # The current mean is always a candidate: cheap insurance that refitting never loses the warm start.
        extra = [mean[None]]
        if iteration == 0 and init_samples is not None:
            extra.append(init_samples)
        return extra

    def _sample(self, n: int, mean: Tensor, scale: Tensor, low: Tensor, high: Tensor,
                generator: torch.Generator) -> Tensor:
        horizon, a = mean.shape
        eps = self._noise(n, horizon, a, generator)  # [n, H, A]
        if self.full_covariance:
            # scale is the Cholesky factor [H*A, H*A] of the covariance.
            samples = mean + (eps.reshape(n, -1) @ scale.T).view(n, horizon, a)
        else:
            samples = mean + scale * eps
        return torch.maximum(torch.minimum(samples, high), low)  # clip to the box

    def _refit(self, elites: Tensor, mean: Tensor, scale: Tensor) -> tuple[Tensor, Tensor]:
        k, horizon, a = elites.shape
        m = self.momentum
        new_mean = m * mean + (1 - m) * elites.mean(0)
        if self.full_covariance:
            flat = elites.reshape(k, -1)  # [K, H*A]
            centred = flat - flat.mean(0)
            cov = centred.T @ centred / max(k - 1, 1)
            # K elites give a rank <= K-1 estimate: in H*A > K dims the search would collapse onto the elites'
            # span. Shrinking toward the diagonal keeps every direction explored.
            lam = self.cov_shrinkage
            cov = (1 - lam) * cov + lam * torch.diag(torch.diagonal(cov))
            old_cov = scale @ scale.T
            cov = m * old_cov + (1 - m) * cov
            cov = cov + torch.eye(cov.shape[0]) * self.min_std**2
            new_scale = torch.linalg.cholesky(cov.double()).float()
        else:
            std = elites.std(0, unbiased=k > 1)
            new_scale = (m * scale + (1 - m) * std).clamp_min(self.min_std)
        return new_mean, new_scale

    def _optimize(self, objective, horizon, low, high, init_mean, init_samples, generator):
        mean, std = self._initial(horizon, low, high, init_mean)
        scale = torch.diag(std.flatten()) if self.full_covariance else std
        best_cost, best, evals, per_iter = float("inf"), mean.clone(), 0, []
        elites = elite_cost = None
        for it in range(self.iterations):
            extra = _unique_rows(torch.cat(self._extra_candidates(it, mean, elites, init_samples)))  # [E, H, A]
            n = max(self._population(it) - extra.shape[0], 1)
            # Carried elites (iCEM) were scored in the previous iteration: reuse their costs, do not re-score them.
            known, known_cost = extra[:0], torch.zeros(0)
            if elites is not None:
                match = (extra.flatten(1)[:, None] == elites.flatten(1)[None]).all(-1)  # [E, K]
                hit = match.any(1)
                known, known_cost, extra = extra[hit], elite_cost[match[hit].float().argmax(1)], extra[~hit]
            fresh = torch.cat([extra, self._sample(n, mean, scale, low, high, generator)])
            fresh = torch.maximum(torch.minimum(fresh, high), low)  # [N', H, A]
            fresh_cost = _evaluate(objective, fresh)
            evals += fresh.shape[0]
            samples, cost = torch.cat([known, fresh]), torch.cat([known_cost, fresh_cost])  # [N, H, A], [N]
            order = cost.argsort(stable=True)
            k = self.num_elites(samples.shape[0])
            elites, elite_cost = samples[order[:k]], cost[order[:k]]  # [K, H, A], best first
            if float(cost[order[0]]) < best_cost:
                best_cost, best = float(cost[order[0]]), samples[order[0]].clone()
            per_iter.append(best_cost)
            mean, scale = self._refit(elites, mean, scale)
        return PlanResult(actions=best, cost=best_cost, num_evaluations=evals, iteration_costs=per_iter,
                          elites=elites)


class ICEM(CEM):
    """iCEM (Pinneri et al., 2020): CEM with colored noise, population decay and elite carry-over.

    Args (beyond `CEM`'s):
        population_decay: population at iteration i is num_samples * decay^-i (at least 2 * elites).
        keep_elites: fraction of the previous iteration's elites carried into the next one (their costs are
            reused, not re-scored); the shifted
            elites of the previous plan enter through ``init_samples`` (`TrajectoryPlanner` passes them).
    Defaults follow the paper: beta = 2 red noise, decay 1.25, 30 % carried elites, momentum 0.1.
    """

    def __init__(self, *, num_samples: int = 200, iterations: int = 3, elite_frac: float = 0.05,
                 min_elites: int = 10, momentum: float = 0.1, full_covariance: bool = False, min_std: float = 1e-3,
                 init_std: float | Tensor | None = None, noise_beta: float = 2.0, smoothing: float = 0.0,
                 cov_shrinkage: float = 0.3, population_decay: float = 1.25, keep_elites: float = 0.3):
        super().__init__(num_samples=num_samples, iterations=iterations, elite_frac=elite_frac, min_elites=min_elites,
                         momentum=momentum, full_covariance=full_covariance, min_std=min_std, init_std=init_std,
                         noise_beta=noise_beta, smoothing=smoothing)
        if population_decay < 1.0 or not 0.0 <= keep_elites <= 1.0:
            raise ValueError(f"population_decay must be >= 1 and keep_elites in [0, 1], got {population_decay}, {keep_elites}")
        self.population_decay = float(population_decay)
        self.keep_elites = float(keep_elites)

    def _population(self, iteration: int) -> int:
        k = self.num_elites(self.num_samples)
        return max(int(self.num_samples * self.population_decay ** (-iteration)), 2 * k)

    def _extra_candidates(self, iteration, mean, prev_elites, init_samples):
        extra = []
        if iteration == 0 and init_samples is not None:
            extra.append(init_samples[: max(int(round(self.keep_elites * init_samples.shape[0])), 1)])
        if iteration > 0 and prev_elites is not None and self.keep_elites > 0:
            extra.append(prev_elites[: max(int(round(self.keep_elites * prev_elites.shape[0])), 1)])
        if iteration == self.iterations - 1 or iteration == 0:
            extra.append(mean[None])  # iCEM adds the mean in the last iteration; we also try the warm start
        return extra


class MPPI(Optimizer):
    """Model-predictive path integral: a cost-weighted average of perturbed sequences.

    weights = softmax(-(cost - min) / (temperature * s)), with s = std of the costs when ``normalize_costs``
    (the default, so one temperature works for pixel costs of any scale), else s = 1. The temperature is then
    raised (bisection) until the effective sample size 1 / sum(w^2) is at least ``min_ess`` of the population:
    on a plateau (every pixel cost is nearly equal until the prediction overlaps the goal) one sample below the
    plateau makes the std of the costs small against its own gap, takes all the weight, and the refit std would
    collapse onto it (measured: 0.48 -> 0.001 in one iteration); the floor keeps the refit on several samples.
    With ``adapt_std`` the noise std is refit to the weighted spread of the samples each iteration (as in
    TD-MPC's MPPI); without it the std stays fixed (classic MPPI), which cannot resolve an optimum finer than
    the noise. The final weighted mean is scored as one more candidate; the returned plan is the best sequence
    evaluated (often that mean).
    """

    def __init__(self, *, num_samples: int = 200, iterations: int = 3, temperature: float = 0.5,
                 normalize_costs: bool = True, momentum: float = 0.0, init_std: float | Tensor | None = None,
                 noise_beta: float = 0.0, smoothing: float = 0.0, std_decay: float = 1.0, adapt_std: bool = True,
                 min_std: float = 1e-3, min_ess: float = 0.05):
        super().__init__(num_samples=num_samples, iterations=iterations, init_std=init_std, noise_beta=noise_beta,
                         smoothing=smoothing)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= min_ess <= 1.0:
            raise ValueError(f"min_ess must be in [0, 1], got {min_ess}")
        self.temperature = float(temperature)
        self.normalize_costs = bool(normalize_costs)
        self.momentum = float(momentum)
        self.std_decay = float(std_decay)
        self.adapt_std = bool(adapt_std)
        self.min_std = float(min_std)
        self.min_ess = float(min_ess)

    def weights(self, cost: Tensor) -> Tensor:
        """Sample weights ``[N]`` (sum 1) of costs ``[N]``; inf / NaN costs count as the worst finite one."""
        n = cost.numel()
        finite = torch.isfinite(cost)
        if not bool(finite.any()):
            return torch.full((n,), 1.0 / n)
        c = torch.where(finite, cost, cost[finite].max())
        c = (c - c.min()).double()  # [N] >= 0; double: the bisection below may reach large temperatures
        s = float(c.std()) if self.normalize_costs and n > 1 else 1.0
        s = s if s > 0 else 1.0

        def at(lam: float) -> tuple[Tensor, float]:
            w = torch.softmax(-c / lam, dim=0)
            return w, float(1.0 / w.pow(2).sum())

        lam = self.temperature * s
        w, ess = at(lam)
        floor = self.min_ess * n
        if ess < floor:
            lo, hi = lam, lam
            while ess < floor and hi < lam * 1e12:  # ESS grows with the temperature, to n as lam -> inf
                lo, hi = hi, hi * 4
                w, ess = at(hi)
            for _ in range(30):  # geometric bisection for the smallest temperature that meets the floor
                mid = math.sqrt(lo * hi)
                wm, em = at(mid)
                if em >= floor:
                    hi, w = mid, wm
                else:
                    lo = mid
        return w.float()

    def _optimize(self, objective, horizon, low, high, init_mean, init_samples, generator):
        mean, std = self._initial(horizon, low, high, init_mean)
        a = low.numel()
        best_cost, best, evals, per_iter = float("inf"), mean.clone(), 0, []
        for it in range(self.iterations):
            extra = _unique_rows(torch.cat([mean[None]] + ([init_samples] if it == 0 and init_samples is not None else [])))
            n = max(self.num_samples - extra.shape[0], 1)
            noise = self._noise(n, horizon, a, generator) * std
            samples = torch.cat([extra, mean + noise])
            samples = torch.maximum(torch.minimum(samples, high), low)  # [N, H, A]
            cost = _evaluate(objective, samples)
            evals += samples.shape[0]
            i = int(cost.argmin())
            if float(cost[i]) < best_cost:
                best_cost, best = float(cost[i]), samples[i].clone()
            w = self.weights(cost)  # [N]
            new_mean = (w[:, None, None] * samples).sum(0)  # [H, A]
            if self.adapt_std:
                new_std = (w[:, None, None] * (samples - new_mean).pow(2)).sum(0).sqrt()
                std = self.momentum * std + (1 - self.momentum) * new_std
            std = (std * self.std_decay).clamp_min(self.min_std)
            mean = self.momentum * mean + (1 - self.momentum) * new_mean
            per_iter.append(best_cost)
        # The final mean is one more candidate, scored like the others.
        final_cost = float(_evaluate(objective, mean[None])[0])
        evals += 1
        if final_cost < best_cost:
            best_cost, best = final_cost, mean.clone()
        per_iter[-1] = best_cost
        elites = _unique_rows(torch.stack([best, mean]))  # the best, then the distribution's mean for carry-over
        return PlanResult(actions=best, cost=best_cost, num_evaluations=evals, iteration_costs=per_iter,
                          elites=elites)


class TrajectoryPlanner:
    """Closed-loop wrapper: horizon, action repeat, warm start and elite carry-over around any optimiser.

    With ``action_repeat`` r the optimiser searches over ``ceil(horizon / r)`` distinct actions and the objective
    sees each one held for r steps (cut to ``horizon``). After ``plan``, call ``advance(k)`` when k actions
    were executed: the next plan starts from the previous one shifted by k steps (tail filled with the last
    action), and the previous elites, shifted, are offered to the
    optimiser as extra candidates.

    ``rest_action`` ``[A]`` (e.g. zeros for Meta-World's position deltas: the hand stays where it is): the
    sequence that holds it is offered as one more candidate in every plan. A sampling optimiser with a wide std
    almost never draws "stay still" by chance, so without it an agent that has reached its goal keeps wandering
    around it: each plan executes some random move whose cost is about as low as staying.
    """

    def __init__(self, optimizer: Optimizer, *, horizon: int, action_low, action_high, action_repeat: int = 1,
                 warm_start: bool = True, rest_action=None):
        if action_repeat < 1 or horizon < 1:
            raise ValueError(f"horizon and action_repeat must be >= 1, got {horizon} and {action_repeat}")
        self.optimizer = optimizer
        self.horizon = int(horizon)
        self.low, self.high = _as_bounds(action_low, action_high)
        self.action_repeat = int(action_repeat)
        self.warm_start = bool(warm_start)
        self.rest_action: Tensor | None = None
        if rest_action is not None:
            rest = torch.as_tensor(rest_action, dtype=torch.float32).flatten()
            if rest.shape != self.low.shape or bool((rest < self.low).any() or (rest > self.high).any()):
                raise ValueError(f"rest_action must be an action [{self.low.numel()}] inside the bounds "
                                 f"[{self.low.tolist()}, {self.high.tolist()}], got {rest.tolist()}")
            self.rest_action = rest
        self.reset()

    @property
    def distinct_steps(self) -> int:
        return math.ceil(self.horizon / self.action_repeat)

    @property
    def action_dim(self) -> int:
        return self.low.numel()

    def reset(self) -> None:
        self._prev_plan: Tensor | None = None     # [horizon, A], full steps
        self._prev_elites: Tensor | None = None   # [K, horizon, A]

    def expand(self, actions: Tensor) -> Tensor:
        """Distinct actions [N, H', A] -> full sequence [N, horizon, A] (each held action_repeat steps)."""
        return actions.repeat_interleave(self.action_repeat, dim=1)[:, : self.horizon]

    def compress(self, actions: Tensor) -> Tensor:
        """Full sequence [N, horizon, A] -> distinct actions [N, H', A] (block means)."""
        r, hp = self.action_repeat, self.distinct_steps
        pad = hp * r - actions.shape[1]
        if pad:
            actions = torch.cat([actions, actions[:, -1:].expand(-1, pad, -1)], dim=1)
        return actions.view(actions.shape[0], hp, r, -1).mean(2)

    def _shift(self, seq: Tensor, k: int) -> Tensor:
        # seq [N, horizon, A] -> the same sequences k steps later, the tail holding the last action
        if k >= self.horizon:
            return seq[:, -1:].expand(-1, self.horizon, -1).clone()
        return torch.cat([seq[:, k:], seq[:, -1:].expand(-1, k, -1)], dim=1)

    def advance(self, steps: int) -> None:
        """Tell the planner that ``steps`` actions of the last plan were executed (shifts the warm start)."""
        if self._prev_plan is not None:
            self._prev_plan = self._shift(self._prev_plan[None], steps)[0]
        if self._prev_elites is not None:
            self._prev_elites = self._shift(self._prev_elites, steps)

    @property
    def warm_start_plan(self) -> Tensor | None:
        """The shifted previous plan ``[horizon, A]`` the next `plan` call starts from (None after reset)."""
        return None if self._prev_plan is None else self._prev_plan.clone()

    def plan(self, objective: Objective, *, generator: torch.Generator | None = None,
             seed: int | None = None) -> PlanResult:
        """Optimise; ``objective`` takes full sequences ``[N, horizon, A]``. Returns actions ``[horizon, A]``."""
        init_mean = init_samples = None
        if self.warm_start and self._prev_plan is not None:
            init_mean = self.compress(self._prev_plan[None])[0]
            init_samples = self.compress(self._prev_elites) if self._prev_elites is not None else None
        if self.rest_action is not None:
            rest = self.rest_action.expand(1, self.distinct_steps, -1)  # [1, H', A]
            init_samples = rest if init_samples is None else torch.cat([rest, init_samples])
        res = self.optimizer.optimize(lambda a: objective(self.expand(a)), horizon=self.distinct_steps,
                                      action_low=self.low, action_high=self.high, init_mean=init_mean,
                                      init_samples=init_samples, generator=generator, seed=seed)
        full = self.expand(res.actions[None])[0]
        elites = self.expand(res.elites) if res.elites is not None and res.elites.numel() else None
        self._prev_plan, self._prev_elites = full.clone(), elites
        return PlanResult(actions=full, cost=res.cost, num_evaluations=res.num_evaluations,
                          iteration_costs=res.iteration_costs, elites=elites)


_OPTIMIZERS = {"random": RandomShooting, "cem": CEM, "icem": ICEM, "mppi": MPPI}


def make_optimizer(name: str, **kwargs) -> Optimizer:
    """Build an optimiser by name: 'random', 'cem', 'icem' or 'mppi'."""
    if name not in _OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose from {sorted(_OPTIMIZERS)}")
    return _OPTIMIZERS[name](**kwargs)
