"""Forward processes q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t); see `base.Transition`."""

from discrete_diffusion.transitions.base import Transition
from discrete_diffusion.transitions.gaussian import DiscretizedGaussian

__all__ = ["DiscretizedGaussian", "Transition"]
