"""The shipped examples and the complete config files in the docs (every `docs/*.md`) must stay valid.

Every `examples/*.yaml` is loaded with `edge.config.load_config`. In the docs, a ```yaml block that is a complete
config file is marked by an HTML comment `<!-- validate -->` on the line right before its opening fence; each such
block is written to a file and loaded the same way. Unmarked blocks are fragments and are not checked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gatewatch.config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.yaml"))
DOCS = sorted((ROOT / "docs").glob("*.md"))
DOC = ROOT / "docs" / "configuration.md"
MARKER = "<!-- validate -->"
EXPECTED_EXAMPLES = {"gateway.yaml", "two-tier-edge.yaml", "two-tier-balancer.yaml", "balancer-only.yaml"}


def marked_blocks(text: str, name: str = DOC.name) -> list[tuple[int, str]]:
    """(line number of the opening fence, block text) for every block marked as a complete file."""
    lines = text.splitlines()
    blocks: list[tuple[int, str]] = []
    i = 0
    while i < len(lines):
        if lines[i].strip() == MARKER:
            fence = i + 1
            if fence >= len(lines) or not re.fullmatch(r"```ya?ml\s*", lines[fence].strip()):
                raise AssertionError(f"{name}:{i + 1}: {MARKER} must be followed directly by a ```yaml fence")
            end = fence + 1
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            if end >= len(lines):
                raise AssertionError(f"{name}:{fence + 1}: unterminated ```yaml block")
            blocks.append((fence + 1, "\n".join(lines[fence + 1:end]) + "\n"))
            i = end
        i += 1
    return blocks


def _load(path: Path, label: str) -> None:
    try:
        load_config(path)
    except ConfigError as err:
        pytest.fail(f"{label} does not validate:\n  " + "\n  ".join(err.problems))


def test_the_documented_examples_exist():
    assert EXPECTED_EXAMPLES <= {p.name for p in EXAMPLES}


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_file_validates(path: Path):
    _load(path, f"examples/{path.name}")


DOC_BLOCKS = {doc.name: marked_blocks(doc.read_text(encoding="utf-8"), doc.name) for doc in DOCS}
ALL_DOC_BLOCKS = [(name, line, block) for name, blocks in DOC_BLOCKS.items() for line, block in blocks]


def test_docs_mark_complete_files():
    assert DOC.exists(), "docs/configuration.md is missing"
    # The four deployment patterns and the full annotated example, at least.
    blocks = DOC_BLOCKS.get(DOC.name, [])
    assert len(blocks) >= 5, f"only {len(blocks)} blocks in {DOC.name} are marked {MARKER}"
    # The balancer walkthrough's complete example is checked too.
    assert DOC_BLOCKS.get("balancer.md"), f"docs/balancer.md has no block marked {MARKER}"


@pytest.mark.parametrize("doc,line,block", ALL_DOC_BLOCKS, ids=[f"{d}-line{n}" for d, n, _ in ALL_DOC_BLOCKS])
def test_docs_complete_file_validates(doc: str, line: int, block: str, tmp_path: Path):
    path = tmp_path / f"{doc}-line{line}.yaml"
    path.write_text(block, encoding="utf-8")
    _load(path, f"docs/{doc}, the yaml block at line {line}")


def test_a_broken_block_would_be_caught(tmp_path: Path):
    """The check has teeth: a marked block with a mistake fails to load."""
    doc = f"text\n{MARKER}\n```yaml\nedge:\n  listeners: []\n```\n"
    [(line, block)] = marked_blocks(doc)
    assert line == 3
    path = tmp_path / "broken.yaml"
    path.write_text(block)
    with pytest.raises(ConfigError):
        load_config(path)
