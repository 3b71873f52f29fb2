"""The command line: every command is there, every model-running command takes the shared
model/data options, and commands run on a user model and an image folder (tiny, fast)."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bioattn.cli import build_parser, main
from bioattn.cli.common import experiment_config
from bioattn.experiments.config import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
TINY = "tests.conftest:tiny_rgb_net"

COMMANDS = {
    "train",
    "layers",
    "values",
    "sweep",
    "collect",
    "report",
    "plot",
    "demo",
    "replicate",
    "cueing",
    "noise",
    "orientation",
    "record",
    "analyze",
    "export",
    "mechanisms",
    "ssn",
    "info",
    "init-config",
}
#: Commands that run a model, with the arguments they need besides options.
MODEL_COMMANDS = {
    "train": [],
    "values": [],
    "sweep": [],
    "demo": [],
    "replicate": [],
    "cueing": [],
    "noise": [],
    "orientation": [],
    "record": ["--out", "r.nc"],
    "mechanisms": ["out"],
    "ssn replicate": ["out"],
    "ssn signatures": ["out"],
    "ssn benchmark": ["out"],
}
SHARED = [
    "--config",
    "c.toml",
    "--model",
    "vgg16",
    "--weights",
    "w.pth",
    "--data",
    "images",
    "--data-kind",
    "image-folder",
    "--device",
    "cuda:1",
    "--precision",
    "bfloat16",
]


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_the_parser_has_every_command():
    commands = _subcommands(build_parser())
    assert set(commands) == COMMANDS
    assert {"replicate", "signatures", "benchmark", "convergence"} == set(
        _subcommands(commands["ssn"])
    )
    assert set(_subcommands(commands["analyze"])) == {"neural"}


@pytest.mark.parametrize("command", sorted(MODEL_COMMANDS))
def test_model_commands_take_the_shared_options(command):
    parser = build_parser()
    words = command.split()
    args = parser.parse_args([*words, *MODEL_COMMANDS[command], *SHARED])
    assert (args.config, args.model, args.weights) == (Path("c.toml"), "vgg16", "w.pth")
    assert (args.data, args.data_kind) == (Path("images"), "image-folder")
    assert (args.device, args.precision) == ("cuda:1", "bfloat16")
    # --data-dir is the old name of --data
    old = parser.parse_args([*words, *MODEL_COMMANDS[command], "--data-dir", "idx"])
    assert old.data == Path("idx")
    if words[0] != "ssn":  # the SSN commands' --seed is the seed of their image subsets
        assert parser.parse_args([*words, *MODEL_COMMANDS[command], "--seed", "3"]).seed == 3


def test_flags_not_given_leave_the_library_defaults():
    args = build_parser().parse_args(["cueing"])
    assert experiment_config(args) == ExperimentConfig()
    assert (args.n_pos, args.betas, args.sweep_seed) == (None, None, None)


def test_flags_override_the_config_file(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[model]\nspec = "vgg16"\nseed = 4\n[data]\nkind = "image-folder"\npath = "x"\nsize = 32\n'
        "resize = 40\n"
    )
    args = build_parser().parse_args(
        ["noise", "--config", str(path), "--model", TINY, "--data", "y", "--device", "auto"]
    )
    config = experiment_config(args)
    assert (config.model.spec, config.model.seed, config.model.device) == (TINY, 4, "auto")
    assert (config.data.kind, config.data.path, config.data.size) == ("image-folder", "y", 32)


# --- running on a user model and an image folder -------------------------------------------------
def write_five_categories(root: Path, n: int = 10, size: int = 16) -> Path:
    """``root/train`` and ``root/test`` with five categories of RGB PNGs (arrays need five)."""
    from PIL import Image

    generator = np.random.default_rng(0)
    for split in ("train", "test"):
        for k in range(5):
            folder = root / split / f"c{k}"
            folder.mkdir(parents=True)
            for i in range(n):
                image = generator.integers(0, 60, (size, size, 3)).astype(np.uint8)
                image[:, :, k % 3] += 150
                if k >= 3:
                    image[:: k - 1, :] = 255
                Image.fromarray(image).save(folder / f"{i:02d}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """An image folder and a config for it that names no model (the flags do)."""
    base = tmp_path_factory.mktemp("cli")
    images = write_five_categories(base / "images")
    (base / "data.toml").write_text(
        f'[data]\nkind = "image-folder"\npath = "{images}"\nsize = 16\nresize = 16\n'
        "detector_images = 10\n[values]\ngradient_images = 4\n"
    )
    return base


def test_cueing_on_a_user_model(folder, capsys):
    out = folder / "cueing"
    config = str(folder / "data.toml")
    small = ["--categories", "c0,c3", "--betas", "0,0.5", "--n-pos", "4", "--n-neg", "4"]
    assert main(["cueing", "--config", config, "--model", TINY, *small, "--out", str(out)]) == 0
    assert "valid" in capsys.readouterr().out
    table = pd.read_parquet(out / "cueing.parquet")
    assert set(table["category"]) == {"c0", "c3"}
    assert (out / "detectors.safetensors").exists()  # fitted for the user model, kept


def test_values_then_record_on_a_user_model(folder, capsys):
    config = ["--config", str(folder / "data.toml"), "--model", TINY, "--seed", "1"]
    values = folder / "values" / "values.nc"
    assert main(["values", *config, "--image-types", "merged", "--out", str(values)]) == 0
    assert "gradient_merged" in capsys.readouterr().out
    assert (values.parent / "detectors.safetensors").exists()
    recording = folder / "rec.nc"
    small = ["--categories", "c0,c1", "--n-pos", "3", "--n-neg", "3", "--n-reference", "2"]
    code = main(["record", *config, "--values", str(values), "--out", str(recording), *small])
    assert code == 0
    assert recording.stat().st_size > 0
    assert "recording written to" in capsys.readouterr().out


# --- refusals and errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--model", TINY], f"model {TINY} not supported: `bioattn demo`"),
        (["replicate", "--model", TINY], f"model {TINY} not supported: `bioattn replicate`"),
        (["replicate", "--networks", "0"], "--networks must be at least 1"),
        (["replicate", "--seed", "3"], "give --first-seed 3"),
        (["train", "--device", "cuda"], "device cuda not supported: `bioattn train`"),
        (["ssn", "signatures", "{tmp}/out", "--model", "vgg16"], "model vgg16 not supported"),
        (["ssn", "benchmark", "{tmp}/out", "--precision", "float16"], "build_default_ssn"),
        (["mechanisms", "{tmp}/out", "--epochs", "2"], "--epochs 2: this command loads"),
        (["record", "--out", "{tmp}/r.nc"], "a recording needs values"),
    ],
)
def test_what_a_command_cannot_do_is_refused_clearly(argv, message, tmp_path, capsys):
    argv = [word.replace("{tmp}", str(tmp_path)) for word in argv]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"bioattn {argv[0]}: error: ") and error.count("\n") == 1
    assert message in error
    assert not (tmp_path / "out").exists()


def test_interrupt_exits_with_130(monkeypatch, capsys, tmp_path):
    import bioattn.cli.sweep

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(bioattn.cli.sweep, "cmd_plot", interrupted)
    assert main(["plot", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "bioattn plot: interrupted\n"


def test_python_dash_m_runs_the_cli():
    done = subprocess.run(
        [sys.executable, "-m", "bioattn.cli", "layers", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "usage: bioattn layers" in done.stdout


def test_version_names_bioattn_and_torch(capsys) -> None:
    import bioattn

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"bioattn {bioattn.__version__} (torch ") and "not installed" not in out


def test_info_reports_versions_cache_and_missing_data(tmp_path, monkeypatch, capsys) -> None:
    import bioattn

    monkeypatch.setenv("BIOATTN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("BIOATTN_DATA", str(tmp_path / "nowhere"))
    assert main(["info"]) == 0  # a missing dataset is reported, not an error
    out = capsys.readouterr().out
    assert out.startswith(f"bioattn {bioattn.__version__}\n")
    assert f"cache: {tmp_path / 'cache'} (0 trained networks)" in out
    assert "Fashion-MNIST: not found" in out and str(tmp_path / "nowhere") in out
    assert "submitit" in out and "chromium" in out


def _subparser_actions(parser: argparse.ArgumentParser) -> list[argparse._SubParsersAction]:
    return [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]


def _every_command_path(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """Every command and nested subcommand (aliases included), with the parser it reaches."""
    yield prefix, parser
    for action in _subparser_actions(parser):
        for name, child in action.choices.items():
            yield from _every_command_path(child, (*prefix, name))


def test_help_of_every_command_and_subcommand_prints(capsys) -> None:
    """argparse formats help strings with %, so one stray "%" breaks --help of the whole tool."""
    commands = list(_every_command_path(build_parser()))
    paths = {path for path, _ in commands}
    assert {("ssn", "signatures"), ("analyze", "neural"), ("sweep",)} <= paths
    for path, parser in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*path, "--help"])
        assert exit_info.value.code == 0, path
        assert capsys.readouterr().out.startswith(f"usage: {parser.prog}"), path
