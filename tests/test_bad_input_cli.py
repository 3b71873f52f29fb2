"""Bad input at the command line and in the run loop: refused before any work, with a message
that says what was wrong and what would be right (exit status 2), and nothing half-written."""

from __future__ import annotations

import errno

import pytest

import bioattn
from bioattn.cache import atomic_path
from bioattn.cli import main
from bioattn.errors import ConfigError


def _error(capsys) -> str:
    return capsys.readouterr().err


def test_output_locations_are_checked(tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "adir.nc").mkdir()
    cases = [
        (tmp_path / "afile" / "v.nc", "lies under"),
        (tmp_path / "adir.nc", "should be a file but is a folder"),
        (tmp_path / "afile", "should be a folder but is a file"),
    ]
    for out, message in cases:
        command = "values" if out.suffix == ".nc" else "cueing"
        assert main([command, "--out", str(out)]) == 2
        assert message in _error(capsys)
    monkeypatch.setattr("bioattn.cli.os.access", lambda *_args: False)
    assert main(["cueing", "--out", str(tmp_path / "new")]) == 2
    assert "is not writable" in _error(capsys)
    assert not (tmp_path / "new").exists()


def test_a_full_disk_is_one_clean_message(capsys, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/performance.parquet")

    monkeypatch.setattr("bioattn.models.zoo.build_network", full)
    assert main(["layers", "fashion-vgg"]) == 2
    message = _error(capsys)
    assert "could not write /runs/x/performance.parquet: No space left on device" in message
    assert "Traceback" not in message


def test_atomic_writes_leave_no_temporary_file_on_failure(tmp_path):
    target = tmp_path / "table.parquet"
    with pytest.raises(OSError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert [p.name for p in tmp_path.iterdir()] == ["table.parquet"]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--categories", ""], "expected a comma-separated list"),
        (["--layers", " , "], "expected a comma-separated list"),
        (["--betas", "0,nan"], "numbers must be finite"),
        (["--betas", "0,inf"], "numbers must be finite"),
    ],
)
def test_empty_lists_and_non_finite_betas_are_refused(flags, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["sweep", *flags])
    assert info.value.code == 2
    assert message in _error(capsys)


def test_a_beta_that_overflows_the_logits_is_named(tiny_network, tiny_detectors, values):
    from tests.conftest import make_image_set

    test = make_image_set(n_per_category=10, split="test")
    settings = bioattn.layer_settings(tiny_network, ["conv2_1"], all_layers=False)
    grid = bioattn.Grid.of(settings, ["uniform"], [0, 1, 3e38])
    tasks = {"a": bioattn.make_task_set(test, "a", "merged", 4, 4, seed=0)}
    sink = bioattn.PerformanceSink("category")
    with pytest.raises(ConfigError, match=r"non-finite .* layer conv2_1, uniform, β = 3e\+38"):
        bioattn.run(
            tasks,
            grid,
            bioattn.make_evaluator(tiny_network, tiny_detectors),
            sink,
            bioattn.ValueSource(values),
            progress=False,
        )


def test_one_layer_or_category_named_several_ways_is_merged_with_a_warning(tiny_network):
    from bioattn.data.imageset import resolve_categories

    with pytest.warns(UserWarning, match="layers named more than once were merged: conv2_1"):
        settings = bioattn.layer_settings(tiny_network, ["conv2_1", "features.3", 2], False)
    assert [s.name for s in settings] == ["conv2_1"]
    with pytest.warns(UserWarning, match=r"name some category more than once; using \[.a., .b.\]"):
        assert resolve_categories(["a", "A", 0, "b"], ("a", "b", "c")) == ["a", "b"]


def test_an_rgb_folder_loads_grey_for_a_one_channel_model(tmp_path):
    import numpy as np
    from PIL import Image

    from bioattn.experiments.config import DataSection
    from bioattn.experiments.prepare import load_images
    from tests.conftest import make_tiny_network

    for split in ("train", "test"):
        for name in ("a", "b"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(
                tmp_path / split / name / "0.png"
            )
    network = make_tiny_network()  # its first conv takes 1 channel
    train, _ = load_images(DataSection(kind="image-folder", path=str(tmp_path)), network)
    assert train.images.shape == (2, 1, 8, 8)
    assert network.readout_features(train.images).shape == (2, 3)
