"""Optional dependencies and the extras that install them.

The core of the package (`import discrete_diffusion`, the mathematics) needs torch, numpy and
scipy only. Everything else belongs to an extra of `pyproject.toml`, named after what it serves:

    train   pyyaml, safetensors, tqdm, tensorboard   configs, checkpoints, the `d3pm` command
    images  pillow, matplotlib, scikit-learn         image data, PNG grids, figures, digits
    text    sentencepiece                            LM1B tokenisation
    corpus  gensim                                   the embedded Wikipedia excerpt (enwiki)
    lm1b    datasets (+ sentencepiece)               the public LM1B download
    all     every extra above

A module that needs an optional package imports it through `require(module, extra, what)`,
which turns a missing package into one line naming the extra to install. This module holds no
mathematics and imports nothing of the package.
"""

from __future__ import annotations

import importlib
from types import ModuleType

DISTRIBUTION = "discrete-diffusion"

# top-level import name -> (package to install, extra that installs it)
OPTIONAL = {
    "yaml": ("pyyaml", "train"),
    "safetensors": ("safetensors", "train"),
    "tqdm": ("tqdm", "train"),
    "tensorboard": ("tensorboard", "train"),
    "PIL": ("pillow", "images"),
    "matplotlib": ("matplotlib", "images"),
    "sklearn": ("scikit-learn", "images"),
    "sentencepiece": ("sentencepiece", "text"),
    "gensim": ("gensim", "corpus"),
    "datasets": ("datasets", "lm1b"),
}


class MissingExtra(ModuleNotFoundError, ValueError):
    """An optional package is not installed; the message names the extra that installs it.
    A ModuleNotFoundError for library users, and a ValueError so that the CLI reports it as
    one line (`d3pm: error: ...`)."""


def install_hint(extra: str) -> str:
    return f'pip install "{DISTRIBUTION}[{extra}]"'


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """Import `module` (e.g. "PIL.Image") of the optional `extra`; `what` names the feature
    that needs it in the error ("the digits data"). Raises MissingExtra when the package is
    not installed; an error inside an installed package propagates unchanged."""
    top = module.split(".")[0]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] != top:
            raise  # the package is there but one of its own dependencies is missing
        package = OPTIONAL.get(top, (top, extra))[0]
        raise MissingExtra(f"{what or module} needs {package}: {install_hint(extra)}",
                           name=top) from None


def explain(err: ModuleNotFoundError, what: str = "this") -> MissingExtra | None:
    """A plain ModuleNotFoundError of a known optional package (an import at the top of a
    module, outside `require`) as a MissingExtra naming its extra; None for any other."""
    if isinstance(err, MissingExtra):
        return err
    top = (err.name or "").split(".")[0]
    if top not in OPTIONAL:
        return None
    package, extra = OPTIONAL[top]
    return MissingExtra(f"{what} needs {package}: {install_hint(extra)}", name=top)
