"""The three registries: names in a config -> modules, imported only when used.

Each module exposes a `Config` dataclass and a `build` function:

* data:   `build(cfg, data_arg: str | None) -> DataSource` (data_arg is the CLI's --data);
* model:  `build(cfg, info: DataInfo, num_classes: int, num_steps: int) -> nn.Module`;
* method: `build(cfg, info: DataInfo) -> Method`.

To add a kind, add one line to the table below.
"""

from __future__ import annotations

import importlib
from types import ModuleType

REGISTRIES: dict[str, dict[str, str]] = {
    "data": {
        "text8": "discrete_diffusion.data.text8",
        "lm1b": "discrete_diffusion.data.lm1b",
        "tokens": "discrete_diffusion.data.token_arrays",
        "images": "discrete_diffusion.data.images",
        "cifar10": "discrete_diffusion.data.cifar10",
        "digits": "discrete_diffusion.data.digits",
        "swissroll": "discrete_diffusion.data.swissroll",
        "synthetic": "discrete_diffusion.data.synthetic",
    },
    "model": {
        "transformer": "discrete_diffusion.networks.transformer",
        "causal_transformer": "discrete_diffusion.networks.causal_transformer",
        "unet": "discrete_diffusion.networks.unet",
        "mlp": "discrete_diffusion.networks.mlp",
    },
    "method": {
        "diffusion": "discrete_diffusion.methods.diffusion",
        "autoregressive": "discrete_diffusion.methods.autoregressive",
        "continuous": "discrete_diffusion.methods.continuous",
    },
}


def lookup(registry: str, kind: str) -> ModuleType:
    """The module registered as `kind` in `registry` ("data", "model" or "method").

    Raises:
        ValueError: unknown registry or kind (the message lists the known kinds).
    """
    if registry not in REGISTRIES:
        raise ValueError(f"unknown registry {registry!r}; known: {', '.join(REGISTRIES)}")
    table = REGISTRIES[registry]
    if kind not in table:
        raise ValueError(f"unknown {registry} kind {kind!r}; known: {', '.join(sorted(table))}")
    try:
        return importlib.import_module(table[kind])
    except ModuleNotFoundError as err:
        if err.name != table[kind]:
            raise
        raise ValueError(f"{registry} kind {kind!r} is registered but its module "
                         f"{table[kind]} is not available") from err


def config_class(registry: str, kind: str) -> type:
    """The `Config` dataclass of a kind."""
    return lookup(registry, kind).Config
