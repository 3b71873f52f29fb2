"""Experiment config files: parsing, validation and clear errors."""

from __future__ import annotations

import pytest

from bioattn.errors import ConfigError
from bioattn.experiments.config import ExperimentConfig, load_config, parse_config, tomllib


def write(tmp_path, text: str):
    path = tmp_path / "experiment.toml"
    path.write_text(text)
    return path


def test_a_full_config_is_parsed(tmp_path):
    config = load_config(
        write(
            tmp_path,
            """
[model]
spec = "vgg16"
weights = "vgg16.pth"

[data]
kind = "image-folder"
path = "images"
size = 64
resize = 72

[sweep]
categories = ["cat", "dog"]
betas = [0, 1, 2.5]
layers = ["conv5_3"]
all_layers = false
n_pos = 10

[run]
out = "runs/vgg"
executor = "process"
workers = 4
""",
        )
    )
    assert config.model.spec == "vgg16" and config.data.size == 64
    assert config.sweep.betas == (0.0, 1.0, 2.5) and config.sweep.categories == ("cat", "dog")
    assert config.sweep.all_layers is False and config.sweep.n_pos == 10
    assert config.sweep.n_neg == ExperimentConfig().sweep.n_neg  # untouched keys keep defaults
    assert (config.run.executor, config.run.workers) == ("process", 4)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[sweep]\nbetaz = [1]", r"unknown key\(s\) betaz in \[sweep\]; allowed: task, image"),
        ("[swep]\nbetas = [1]", r"unknown section\(s\) \[swep\]; allowed: \[model\], \[data\]"),
        ('[sweep]\nbetas = "1,2"', r"\[sweep\] betas = '1,2' has the wrong type: expected list"),
        ('[sweep]\nn_pos = "5"', r"\[sweep\] n_pos = '5' has the wrong type: expected int"),
        ("[sweep]\nall_layers = 1", r"all_layers = 1 has the wrong type: expected bool"),
        ("[sweep]\nbetas = [0, true]", r"\[sweep\] betas\[1\] = True has the wrong type"),
        ('[run]\nexecutor = "slurm"', r"executor 'slurm' is not known; valid: local, process"),
        ('[data]\nkind = "image-folder"', r"kind 'image-folder' needs a path"),
        ('[data]\nkind = "imagenet"', r"kind 'imagenet' is not known; valid: fashion-mnist"),
        ("sweep = 3", r"\[sweep\] must be a table"),
        ("[sweep\nbetas = [1]", r"is not valid TOML"),
    ],
)
def test_bad_configs_name_the_key_and_what_is_allowed(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text))


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_optional_values_accept_nothing_or_their_type():
    config = parse_config({"sweep": {"snr": 2, "categories": ["a"]}})
    assert config.sweep.snr == 2.0 and isinstance(config.sweep.snr, float)
    assert parse_config({}).sweep.snr is None


def test_the_readme_example_config_is_valid():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    config = parse_config(tomllib.loads(block))
    assert config.model.spec == "vgg16" and config.run.executor == "submitit"
    assert config.run.submitit_parameters()["slurm_partition"] == "gpu"
