"""discrete_diffusion: discrete denoising diffusion probabilistic models (D3PM) in PyTorch.

The top level is the mathematics alone (Austin et al., 2021): forward processes
(`transitions`), noise schedules (`schedules`), the process with its posteriors, losses,
bounds and samplers (`D3PM`), continuous-time keep-or-jump processes (`continuous`,
`alpha_schedules`), and the truncated discretized logistic (`logistic`).
"""

from discrete_diffusion import alpha_schedules, continuous, logistic, schedules, transitions
from discrete_diffusion.process import D3PM

__all__ = ["D3PM", "alpha_schedules", "continuous", "logistic", "schedules", "transitions"]
__version__ = "0.1.0"
