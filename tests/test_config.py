"""Config parsing: YAML recipes, dotted overrides, and errors that name the key."""

from pathlib import Path

import pytest

from vla.config import ModelConfig, from_yaml, parse, to_yaml
from vla.pipeline import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs").glob("quickstart*.yaml")))
def test_recipes_parse(recipe):
    cfg = parse(PipelineConfig, [f"--config_path={recipe}"])
    assert cfg.model.head.type == "dit"
    assert cfg.eval.seed_start >= 100_000  # evaluation never reuses demo seeds
    assert cfg.train.time_limit_s == 0  # a fixed number of steps: the same figures on any machine


@pytest.mark.parametrize("recipe", sorted((ROOT / "configs/train").glob("*.yaml")), ids=lambda p: p.stem)
def test_train_recipes_parse(recipe):
    from vla.training.train import TrainRunConfig

    cfg = parse(TrainRunConfig, [f"--config_path={recipe}"])
    assert cfg.model.head.type == recipe.stem.split("_")[-1]  # metaworld_<head>.yaml
    assert cfg.train.time_limit_s == 0


def test_head_benchmark_recipe_parses():
    import draccus

    from vla.eval.heads_benchmark import HeadsBenchmarkConfig, pipeline_config

    cfg = draccus.parse(HeadsBenchmarkConfig, config_path=str(ROOT / "configs/bench/heads.yaml"), args=[])
    models = {name: pipeline_config(cfg, name, 0).model for name in cfg.heads}
    assert models["dita_shared"].head.denoiser == "shared" and models["dita_history2"].n_obs_steps == 2
    assert cfg.bac.tolerance is not None and set(cfg.bac.heads) <= set(cfg.heads)


def test_quickstart_trains_a_fixed_number_of_steps():
    cfg = parse(PipelineConfig, [f"--config_path={ROOT / 'configs/quickstart.yaml'}"])
    assert (cfg.train.steps, cfg.train.batch_size, cfg.train.time_limit_s) == (3000, 32, 0)


def test_data_embodiment_override_parses():
    from vla.training.train import TrainRunConfig

    assert parse(TrainRunConfig, []).data.embodiment == ""  # the dataset's robot_type
    assert parse(TrainRunConfig, ["--data.embodiment=my_arm"]).data.embodiment == "my_arm"


def test_overrides_apply_on_top_of_yaml():
    cfg = parse(PipelineConfig, [f"--config_path={ROOT / 'configs/quickstart.yaml'}", "--train.steps=7",
                                   "--model.head.depth=2", "--eval.tasks=[push]"])
    assert (cfg.train.steps, cfg.model.head.depth, cfg.eval.tasks) == (7, 2, ["push"])


def test_unknown_key_is_named(tmp_path, capsys):
    with pytest.raises(SystemExit):
        parse(PipelineConfig, ["--train.stepz=7"])
    assert "--train.stepz" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  head:\n    type: dit\n    depht: 3\n")
    with pytest.raises(Exception, match="depht"):
        parse(PipelineConfig, [f"--config_path={bad}"])


def test_wrong_type_is_named():
    with pytest.raises(Exception, match="train.steps"):
        parse(PipelineConfig, ["--train.steps=many"])


def test_unknown_head_lists_choices(capsys):
    with pytest.raises(SystemExit):
        parse(PipelineConfig, ["--model.head.type=difusion"])
    assert "dit" in capsys.readouterr().err


def test_invalid_values_fail_in_post_init():
    with pytest.raises(ValueError, match="normalization"):
        ModelConfig(normalization="minmax")


def test_model_config_yaml_round_trip():
    cfg = ModelConfig()
    assert from_yaml(ModelConfig, to_yaml(cfg)) == cfg
