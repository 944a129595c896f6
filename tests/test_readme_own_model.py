"""The README's "Your own model" code blocks run as written (GPT-2 from transformers, tiny config)."""
import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")


@pytest.mark.slow  # ~35 s on 2 CPU cores: a fine-tune, an SLQ spectrum and top eigenvalues of a GPT-2
def test_readme_your_own_model_blocks_run():
    text = Path(__file__).resolve().parents[1].joinpath("README.md").read_text()
    section = text[text.index("## Your own model"):text.index("## CLI\n")]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 2
    scope: dict = {}
    exec(compile(blocks[0], "README: Your own model", "exec"), scope)
    assert scope["pl"].pruning.count_nonzero_pruned(scope["model"], scope["masks"]) == 0
    exec(compile(blocks[1], "README: your own training loop", "exec"), scope)
    assert scope["pl"].pruning.count_nonzero_pruned(scope["model"], scope["masks"]) == 0
