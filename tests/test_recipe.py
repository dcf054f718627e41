"""Named QAT recipes (issue 23): the default and the paper's, explicit options on top, recorded."""

from __future__ import annotations

import pytest

from qffs.errors import QffsError
from qffs.jobs.recipes import DEFAULT_RECIPE, RECIPES, by_recipe, resolve_recipe


def test_the_papers_recipe_is_its_table_2():
    paper = resolve_recipe("paper")
    assert (paper.epochs, paper.lr, paper.batch_size, paper.schedule, paper.distill) == (40, 0.01, 32, "exp", 0.0)
    cfg = paper.train_config()
    assert (cfg.epochs, cfg.lr, cfg.schedule, cfg.no_decay_names) == (40, 0.01, "exp", ("step",))


def test_explicit_options_replace_the_recipes_values_and_none_keeps_them():
    r = resolve_recipe("paper", epochs=3, lr=None, distill=0.25, bn_reestimate=None)
    assert (r.epochs, r.lr, r.distill, r.batch_size, r.bn_reestimate) == (3, 0.01, 0.25, 32,
                                                                          RECIPES["paper"].bn_reestimate)
    assert resolve_recipe() == RECIPES[DEFAULT_RECIPE]


def test_an_unknown_recipe_is_one_line():
    with pytest.raises(QffsError, match="unknown --recipe 'fast': choose one of qffs, paper"):
        resolve_recipe("fast")


def test_option_help_states_each_recipes_value():
    assert by_recipe("epochs") == f"Recipes: qffs {RECIPES['qffs'].epochs}, paper 40."
    assert by_recipe("bit_schedule").endswith("paper none.")


def test_quantize_records_the_recipe_and_its_settings(cli, tmp_path):
    from qffs.io import load_checkpoint

    r = cli("quantize", "models/fmnist_vgg_small.pt", "--out", tmp_path / "q.pt", "--recipe", "paper",
            "--epochs", "0", "--limit", "200", "--test-limit", "64")
    assert r.returncode == 0, r.stderr
    meta = load_checkpoint(tmp_path / "q.pt").meta
    assert meta["quant"]["recipe"] == "paper" and meta["quant"]["bn_reestimate"] is False and meta["batch_size"] == 32
    assert meta["train_config"]["schedule"] == "exp" and meta["train_config"]["epochs"] == 0
    assert "recipe: paper — QAT 0 epoch(s), SGD lr 0.01 exp" in cli("info", tmp_path / "q.pt").stdout
