"""Forward processes q(x_t | x_{t-1}) = Cat(x_{t-1} Q_t); see `base.Transition`."""

from discrete_diffusion.transitions.absorbing import Absorbing
from discrete_diffusion.transitions.autoregressive import Autoregressive
from discrete_diffusion.transitions.base import Transition
from discrete_diffusion.transitions.dense import Dense, DenseTransition
from discrete_diffusion.transitions.gaussian import DiscretizedGaussian
from discrete_diffusion.transitions.mask_uniform import MaskUniform
from discrete_diffusion.transitions.nearest_neighbor import NearestNeighbor
from discrete_diffusion.transitions.uniform import Uniform

__all__ = [
    "Absorbing",
    "Autoregressive",
    "Dense",
    "DenseTransition",
    "DiscretizedGaussian",
    "MaskUniform",
    "NearestNeighbor",
    "Transition",
    "Uniform",
]
