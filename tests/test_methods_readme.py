"""Every discovered method folder (and the template) documents itself: a README that names the
method, cites its paper (the manifest's URL), and says what it needs and where it deviates."""

from __future__ import annotations

import re

import pytest

from harness.methods import TEMPLATE_DIR, discover


@pytest.mark.parametrize("method", discover().names())
def test_every_method_has_a_readme(method):
    source = discover().get(method)
    readme = source.path / "README.md"
    assert readme.is_file(), f"{source.path}: add a README.md (see method_template/README.md)"
    text = readme.read_text()
    title = text.splitlines()[0]
    assert title.startswith("# ") and source.manifest.name.split("-")[0].lower() in title.lower(), title
    paper = source.manifest.paper
    assert paper is not None and paper.url and paper.url in text, f"{method}: cite {paper and paper.url}"
    assert "deviat" in text.lower() or "relation to the paper" in text.lower(), f"{method}: say where it deviates"
    for hp in source.manifest.hyperparameters:
        assert re.search(rf"`{hp}[`:]", text), f"{method}: document hyperparameter {hp!r}"


def test_the_template_has_its_guide():
    assert (TEMPLATE_DIR / "README.md").is_file()
