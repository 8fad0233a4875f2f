"""The README is short and says no figure that contradicts another: its one table (the demo's,
between the demo-table markers) is the only place those figures live, and every other figure it
states appears in docs/RESULTS.md, where each figure has its command and commit."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "docs" / "RESULTS.md").read_text()
NOT_RESULTS = {"3.10"}  # the Python version
FIGURE = re.compile(r"(?<![\w.])\d[\d,]*\.\d+(?![\w.])|(?<![\w.])\d+(?:\.\d+)?%")


def _demo_block(text: str) -> str:
    m = re.search(r"<!-- demo-table.*?-->\n(.*?)<!-- /demo-table -->", text, flags=re.S)
    assert m, "README.md has no demo-table block"
    return m.group(1)


def _prose(text: str) -> str:
    """Text outside code blocks, inline code and the demo block."""
    text = text.replace(_demo_block(text), "")
    text = re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)
    return re.sub(r"`[^`]*`", "", text)


def figures(text: str) -> set[str]:
    return set(FIGURE.findall(text)) - NOT_RESULTS


def test_readme_is_short_and_keeps_one_table_of_at_most_six_rows():
    assert len(README.splitlines()) <= 200
    rows = [line for line in _demo_block(README).splitlines() if line.startswith("|")][2:]
    assert 1 <= len(rows) <= 6 and all(figures(r) for r in rows), rows


def test_every_other_readme_figure_is_in_results():
    missing = sorted(f for f in figures(_prose(README)) if f not in RESULTS)
    assert not missing, f"figures in README.md that docs/RESULTS.md does not hold: {missing}"


def test_the_checks_see_figures():
    """The extraction itself: a made-up figure outside the table is caught, one inside is not."""
    fake = README.replace("## Install", "It reaches 97.3% on 1,234.5 images.\n\n## Install")
    assert {"97.3", "1,234.5"} <= figures(_prose(fake)) and not {"97.3", "1,234.5"} & figures(RESULTS)
    assert figures(_demo_block(README)) and not figures(_demo_block(README)) & figures(_prose(README))
