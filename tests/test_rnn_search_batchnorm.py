"""``space.batchnorm`` of ``nasp rnn search``: off for NASP's one-hot forward, on for DARTS' dense mixture, and an
explicit value wins."""

from __future__ import annotations

import pytest
from test_rnn_cli import _config  # the same tiny generated corpus

import nasp.spaces.rnn as rnn_space
from nasp.cli import main
from nasp.commands.rnn import RNNSpaceConfig


@pytest.mark.parametrize("value, strategy, expected", [(None, "nasp", False), (None, "random", False),
                                                       (None, "darts1", True), (None, "darts2", True),
                                                       (True, "nasp", True), (False, "darts1", False)])
def test_batchnorm_resolves_by_strategy_unless_set(value, strategy, expected):
    assert RNNSpaceConfig(batchnorm=value).resolved_batchnorm(strategy) is expected


@pytest.mark.parametrize("sets, strategy, expected", [([], "nasp", False), ([], "darts1", True),
                                                      (["space.batchnorm=true"], "nasp", True)])
def test_search_builds_the_space_with_the_resolved_batchnorm(tmp_path, monkeypatch, sets, strategy, expected):
    seen = []
    original = rnn_space.RNNSearchSpace.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs["batchnorm"])
        original(self, *args, **kwargs)

    monkeypatch.setattr(rnn_space.RNNSearchSpace, "__init__", spy)
    space = {"ninp": 8, "nhid": 8, "num_nodes": 3, "dropout": 0.1, "dropout_h": 0.1, "dropout_x": 0.1,
             "dropout_i": 0.1}
    cfg = _config(tmp_path, name="search", space=space,
                  search={"epochs": 1, "max_steps_per_epoch": 2, "strategy": strategy})
    assert main(["rnn", "search", "--config", str(cfg), "--quiet", "--set", *sets, "threads=1"]) == 0
    assert seen == [expected]
    assert (tmp_path / "search" / "resolved_config.yaml").read_text().count("batchnorm") == 1


def test_a_bad_batchnorm_value_names_the_key(tmp_path, capsys):
    cfg = _config(tmp_path, name="search", search={"epochs": 1, "max_steps_per_epoch": 1})
    assert main(["rnn", "search", "--config", str(cfg), "--quiet", "--set", "space.batchnorm=maybe"]) != 0
    err = capsys.readouterr().err
    assert "space.batchnorm" in err and len(err.strip().splitlines()) <= 2
