"""The Python example in README.md runs as written."""

from pathlib import Path

import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(capsys):
    text = README.read_text()
    start = text.index("```python") + len("```python")
    code = text[start:text.index("```", start)]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    samples, bound = namespace["samples"], namespace["bound"]
    assert samples.shape == (4, 64) and 0 <= int(samples.min()) and int(samples.max()) < 28
    assert torch.isfinite(bound).all() and (bound > 0).all()
    assert "torch.Size([4, 64])" in capsys.readouterr().out
