"""The README's figures come from one place: every measured figure the README quotes stands in
docs/measurements.md too, beside its command, machine and date.

    python -m pytest -q tests/test_docs.py -s      # -s prints each figure and where it was found

A figure here is a number with a unit of time, size or share (`1.1 s`, `1.0 h`, `3.0 GB`, `18-27
minutes`, `50%`) anywhere in the README, and every decimal number in its "Current results" section
(the scores and ratios). Section numbers (§3.1), equation numbers and versions carry no unit and
stand outside that section, so they are not figures.
"""

import re

from tests.helpers import PROJECT

UNIT = r"(?:(?:s|h|min|minutes|hours|GB|MB)\b|%)"
WITH_UNIT = re.compile(r"(?<![\w.§])(\d+(?:\.\d+)?(?:-\d+(?:\.\d+)?)?)\s?(" + UNIT + ")")
DECIMAL = re.compile(r"(?<![\w.§])\d+\.\d+(?![\w.])")


def readme_figures(text):
    """The figures of a README text, as (figure, where) pairs: `where` is 'unit' or 'results'."""
    found = [(f"{m.group(1)} {m.group(2)}".replace(" %", "%"), "unit") for m in WITH_UNIT.finditer(text)]
    results = text.split("## Current results", 1)[1].split("\n## ", 1)[0] if "## Current results" in text else ""
    found += [(m.group(0), "results") for m in DECIMAL.finditer(results)]
    return found


def _normal(text):
    return " ".join(text.replace("\u00a0", " ").split())


def test_the_figure_finder_finds_figures_and_not_section_numbers():
    text = ("Read §3.1 and Eq. 2 with torch 2.4. It takes 1.1 s, then 18-27 minutes, 3.0 GB, 50%.\n"
            "## Current results\n| ratio | **0.64**, 0.67 |\n## Next\n0.99 is not in the results.")
    assert readme_figures(text) == [("1.1 s", "unit"), ("18-27 minutes", "unit"), ("3.0 GB", "unit"),
                                    ("50%", "unit"), ("0.64", "results"), ("0.67", "results")]


def test_every_figure_the_readme_quotes_is_in_docs_measurements():
    readme = (PROJECT / "README.md").read_text()
    measurements = _normal((PROJECT / "docs" / "measurements.md").read_text())
    figures = readme_figures(readme)
    assert figures, "the README quotes no figure: the finder is broken"
    missing = []
    for figure, where in figures:
        ok = figure in measurements or figure.replace(" ", "") in measurements.replace(" ", "")
        print(f"{'found  ' if ok else 'MISSING'} {figure!r} ({where})")
        if not ok:
            missing.append(figure)
    assert not missing, (f"the README quotes {missing}, which docs/measurements.md does not give: add each "
                         f"there with its command, machine and date, or take it out of the README")
