"""The top-level API: ``import bioattn`` is light and every public name resolves."""

from __future__ import annotations

import subprocess
import sys

import bioattn


def test_every_public_name_resolves_to_its_module():
    assert set(bioattn.__all__) == {"BioattnError", "__version__", *bioattn._API}
    for name, module in bioattn._API.items():
        assert getattr(bioattn, name).__module__ == module


def test_import_does_not_load_torch():
    code = "import sys, bioattn; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_generic_run_loop_from_the_top_level(tiny_network, tiny_detectors, values):
    from .conftest import make_image_set

    test = make_image_set(n_per_category=10, split="test")
    settings = bioattn.layer_settings(tiny_network, ["conv2_1"], all_layers=False)
    grid = bioattn.Grid.of(settings, ["tuning", "shuffled-tuning"], [0, 0.5])
    tasks = {c: bioattn.make_task_set(test, c, "merged", 4, 4, seed=k) for k, c in enumerate("ab")}
    evaluator = bioattn.make_evaluator(tiny_network, tiny_detectors)
    sink = bioattn.run(
        tasks,
        grid,
        evaluator,
        bioattn.PerformanceSink("category"),
        bioattn.ValueSource(values),
        progress=False,
    )
    table = sink.table()
    assert len(table) == 2 * 2 * 2  # categories × methods × β
    assert set(table["method"]) == {"tuning", "shuffled-tuning"}
