"""Every command checks its names and settings before any work and has ``--dry-run``;
``bioattn init-config`` writes example configs that parse and plan; ``-q`` silences."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from bioattn.cli import main
from bioattn.cli.templates import TEMPLATES, template_text
from bioattn.experiments.config import load_config
from tests.conftest import write_pattern_folder

TINY = "tests.conftest:tiny_rgb_net"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_pattern_folder(tmp_path_factory.mktemp("plans") / "images", n_per_category=6)


@pytest.fixture
def no_work(monkeypatch):
    """Any training, values or sweep fails the test: a dry run must not start one."""

    def refuse(*_args, **_kwargs):
        raise AssertionError("a dry run started work")

    for target in (
        "bioattn.models.train.load_default",
        "bioattn.attention.values.compute_values",
        "bioattn.experiments.sweep.run_sweep",
        "bioattn.experiments.prepare.prepare",
    ):
        monkeypatch.setattr(target, refuse)


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# --- init-config ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", sorted(TEMPLATES))
def test_init_config_writes_a_template_that_loads(kind, tmp_path, capsys):
    out = tmp_path / f"{kind}.toml"
    assert main(["init-config", kind, "--out", str(out)]) == 0
    assert out.read_text() == template_text(kind)
    assert "--dry-run" in capsys.readouterr().out
    config = load_config(out)
    assert config.sweep.betas  # parsed into a full config, not only read


def test_init_config_keeps_an_existing_file_unless_forced(tmp_path, capsys):
    out = tmp_path / "mine.toml"
    out.write_text("# my edits\n")
    assert main(["init-config", "default", "--out", str(out)]) == 2
    assert "add --force" in capsys.readouterr().err
    assert out.read_text() == "# my edits\n"
    assert main(["init-config", "default", "--out", str(out), "--force"]) == 0
    assert out.read_text() == template_text("default")


def test_init_config_to_stdout(capsys):
    assert main(["init-config", "slurm", "--out", "-"]) == 0
    assert capsys.readouterr().out == template_text("slurm")


def test_unknown_template_lists_the_valid_ones(capsys):
    with pytest.raises(SystemExit):
        main(["init-config", "resnet"])
    assert "choose from 'default', 'vgg16', 'user-model', 'slurm'" in capsys.readouterr().err


# --- each template, planned with --dry-run --------------------------------------------------
def _template(kind: str, tmp_path: Path) -> str:
    out = tmp_path / f"{kind}.toml"
    assert main(["init-config", kind, "--out", str(out)]) == 0
    return str(out)


def _dry_run(argv: list[str], tmp_path: Path, capsys, monkeypatch) -> str:
    monkeypatch.chdir(tmp_path)
    capsys.readouterr()
    before = _files(tmp_path)
    assert main([*argv, "--dry-run"]) == 0
    assert _files(tmp_path) == before  # nothing written: no run folder, no values
    out = capsys.readouterr().out
    assert "the plan (nothing was run)" in out
    return out


def test_default_template_dry_run(tmp_path, capsys, monkeypatch, no_work):
    config = _template("default", tmp_path)
    out = _dry_run(["sweep", "--config", config], tmp_path, capsys, monkeypatch)
    assert "conditions   5,040" in out and "estimated time" in out and "estimated disk" in out
    assert "runs/sweep/" in out


def test_slurm_template_dry_run_names_the_executor(tmp_path, capsys, monkeypatch, no_work):
    config = _template("slurm", tmp_path)
    out = _dry_run(["sweep", "--config", config], tmp_path, capsys, monkeypatch)
    assert "executor     submitit (20 workers)" in out


def test_vgg16_template_dry_run_on_an_image_folder(images, tmp_path, capsys, monkeypatch, no_work):
    config = _template("vgg16", tmp_path)
    argv = ["sweep", "--config", config, "--data", str(images), "--weights", ""]
    out = _dry_run([*argv, "--image-types", "merged"], tmp_path, capsys, monkeypatch)
    assert "network      vgg16" in out
    assert "categories   3: bars, blobs, dots" in out
    assert "layers       conv1_1, conv2_1, conv3_1, conv4_1, conv5_1" in out


def test_user_model_template_dry_run(images, tmp_path, capsys, monkeypatch, no_work):
    config = _template("user-model", tmp_path)
    argv = ["sweep", "--config", config, "--model", TINY, "--data", str(images), "--weights", ""]
    out = _dry_run(argv, tmp_path, capsys, monkeypatch)
    assert "methods      tuning, gradient, shuffled-tuning, shuffled-gradient, uniform" in out


# --- names checked before any work -----------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sweep", "--layers", "conv9_9"], "conv9_9"),
        (["sweep", "--categories", "Trousers"], "Trousers"),
        (["sweep", "--methods", "tunning"], "tunning"),
        (["values", "--image-types", "noise"], "no gradient values for image type 'noise'"),
    ],
)
def test_bad_names_fail_before_any_work(argv, message, tmp_path, capsys, monkeypatch, no_work):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert _files(tmp_path) == []


def test_a_missing_values_file_is_refused_before_recording(tmp_path, capsys, no_work):
    argv = ["record", "--values", str(tmp_path / "none.nc"), "--out", str(tmp_path / "r.nc")]
    assert main(argv) == 2
    assert "none.nc does not exist" in capsys.readouterr().err


def test_dry_run_of_a_file_command_lists_its_inputs(tmp_path, capsys):
    assert main(["layers", TINY, "--dry-run"]) == 0
    assert f"model  {TINY}" in capsys.readouterr().out


# --- verbosity -----------------------------------------------------------------------------
def test_quiet_silences_info_and_verbose_shows_it(tmp_path, capsys):
    config = _template("default", tmp_path)
    capsys.readouterr()
    main(["-q", "sweep", "--config", config, "--dry-run"])
    assert logging.getLogger("bioattn").getEffectiveLevel() > logging.WARNING
    main(["sweep", "--config", config, "--dry-run", "-vv"])
    assert logging.getLogger("bioattn").getEffectiveLevel() == logging.DEBUG
