"""The conformance suite runs over every method folder in methods/ (and the template)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.conformance import check_method
from harness.methods import TEMPLATE_DIR, discover, load_source


@pytest.mark.parametrize("method_id", discover().names())
def test_every_method_conforms(method_id):
    report = check_method(discover().get(method_id), runner="subprocess")
    assert report.passed, [c for c in report.checks if not c.passed]
    assert [c.name for c in report.checks] == ["manifest", "handshake", "replies", "determinism", "time", "memory",
                                               "no network"]


def test_template_conforms_and_cli_reports(tmp_path):
    res = CliRunner().invoke(app, ["check-method", str(TEMPLATE_DIR), "--json", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "determinism" in res.output and (tmp_path / "r.json").exists()


def _method(tmp_path, body):
    d = tmp_path / "m"
    res = CliRunner().invoke(app, ["new-method", "broken_one", "--dest", str(tmp_path)])
    assert res.exit_code == 0, res.output
    d = tmp_path / "broken_one"
    (d / "method.py").write_text("import time, torch\nfrom specs.sdk import ImportanceMethod\n\n"
                                 "class Method(ImportanceMethod):\n    def score_group(self, group, obs):\n" + body)
    return load_source(d)


@pytest.mark.parametrize("body, check, detail", [
    ("        return torch.ones(group.n_channels + 1)\n", "replies", "expected"),
    ("        g = torch.Generator().manual_seed(time.time_ns())\n"
     "        return torch.rand(group.n_channels, generator=g)\n", "determinism", "differ between two runs"),
])
def test_broken_methods_fail_the_suite(tmp_path, body, check, detail):
    report = check_method(_method(tmp_path, body))
    assert not report.passed
    failed = {c.name: c for c in report.checks if not c.passed}
    assert check in failed and detail in failed[check].detail
    res = CliRunner().invoke(app, ["check-method", str(tmp_path / "broken_one")])
    assert res.exit_code == 1 and "FAIL" in res.output


def test_new_method_rejects_bad_names_and_existing_folders(tmp_path):
    res = CliRunner().invoke(app, ["new-method", "Bad-Name", "--dest", str(tmp_path)])
    assert res.exit_code == 2 and "lower snake case" in res.output
    assert CliRunner().invoke(app, ["new-method", "ok_name", "--dest", str(tmp_path)]).exit_code == 0
    res = CliRunner().invoke(app, ["new-method", "ok_name", "--dest", str(tmp_path)])
    assert res.exit_code == 2 and "already exists" in res.output
