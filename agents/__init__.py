"""Planning and control on top of any `foresight.WorldModel`: trajectory optimisers, costs toward goal images,
and a closed-loop visual-MPC agent. Imports only `foresight` (never `envs`), so it runs on a robot computer
without Meta-World."""

from agents.costs import Cost, EmbeddingCost, LPIPSCost, PixelCost, horizon_weights, make_cost
from agents.mpc import GripperHeuristic, PlanRecord, RandomActionAgent, VisualMPC, run_episode
from agents.optimizers import (CEM, ICEM, MPPI, Optimizer, PlanResult, RandomShooting, TrajectoryPlanner,
                               make_optimizer)

__all__ = [
    "Optimizer", "PlanResult", "RandomShooting", "CEM", "ICEM", "MPPI", "TrajectoryPlanner", "make_optimizer",
    "Cost", "PixelCost", "LPIPSCost", "EmbeddingCost", "horizon_weights", "make_cost",
    "VisualMPC", "GripperHeuristic", "PlanRecord", "RandomActionAgent", "run_episode",
]
