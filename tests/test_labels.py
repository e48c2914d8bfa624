"""The one label function (harness.labels): the strings run directories, events, the leaderboards and the web
API are keyed by, written out by hand here so that a change to them fails."""

from types import SimpleNamespace as NS

from harness.labels import label_of, run_label, short


def test_run_label_writes_method_variant_and_regularizer():
    assert run_label("magnitude_l1") == "magnitude_l1"
    assert run_label("magnitude_l1", "-") == "magnitude_l1"
    assert run_label("magnitude_l1", "") == "magnitude_l1"
    assert run_label("magnitude_l1", "group_norm") == "magnitude_l1+group_norm"
    assert run_label("taylor", "group_norm", "@2 (a=1)") == "taylor@2 (a=1)+group_norm"


def test_label_of_a_run_and_short_digests():
    assert label_of(NS(method=NS(id="fpgm"), regularizer=None)) == "fpgm"
    assert label_of(NS(method=NS(id="fpgm"), regularizer=NS(id="growing_reg"))) == "fpgm+growing_reg"
    assert short("0123456789abcdef") == "0123456789ab" and short(None) == "unknown" and short("abcdef", 3) == "abc"
