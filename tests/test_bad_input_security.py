"""Bad input never runs code it should not: a model spec must name a model factory (checked before
anything is called), and a weights file holding pickled objects is refused with a plain message."""

from __future__ import annotations

import functools
import os
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
import torch

from bioattn.cli import main
from bioattn.errors import ConfigError, WeightsError
from bioattn.models import build_network
from bioattn.models.weights import load_state_dict_file

#: What torch.load says when it refuses a file; none of it may reach our messages.
TORCH_ADVICE = ("Re-running", "likely succeed", "two options", "add_safe_globals", "trusted source")


@pytest.fixture
def bad_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A temporary module of callables that are not model factories; each records its calls."""
    name = f"bioattn_bad_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        textwrap.dedent(
            """
            import functools
            import os

            from torch import nn

            calls = []
            getcwd = os.getcwd


            def needs_an_argument(width):
                calls.append(("needs_an_argument", width))
                return nn.Linear(width, 2)


            def needs_a_keyword(*, width):
                calls.append(("needs_a_keyword", width))
                return nn.Linear(width, 2)


            def make_linear(width=3):
                calls.append(("make_linear", width))
                return nn.Sequential(
                    nn.Conv2d(1, width, 3),
                    nn.ReLU(),
                    nn.AdaptiveAvgPool2d(1),
                    nn.Flatten(),
                    nn.Linear(width, 2),
                )


            make_wide = functools.partial(make_linear, width=5)


            class NotAModel:
                def __init__(self):
                    calls.append(("NotAModel", None))


            an_instance = nn.Sequential(nn.Linear(3, 2))
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = __import__(name)
    yield module
    sys.modules.pop(name, None)


def test_a_standard_library_function_is_refused_without_being_called(monkeypatch):
    calls: list[tuple] = []
    real_getcwd = os.getcwd

    def recording_getcwd(*args, **kwargs):
        calls.append(args)
        return real_getcwd(*args, **kwargs)

    monkeypatch.setattr(os, "getcwd", recording_getcwd)
    with pytest.raises(ConfigError) as info:
        build_network("os:getcwd")
    assert calls == []
    message = str(info.value)
    assert "'os:getcwd'" in message and "standard library" in message
    assert "model factory" in message and "mypackage.models:make_net" in message


def test_a_standard_library_module_is_not_even_imported():
    sys.modules.pop("antigravity", None)  # importing it would open a web browser
    with pytest.raises(ConfigError, match="standard library"):
        build_network("antigravity:geohash")
    assert "antigravity" not in sys.modules


def test_builtins_and_c_functions_are_refused(bad_module):
    for spec in ("torch:zeros", f"{bad_module.__name__}:getcwd"):
        with pytest.raises(ConfigError, match="built-in or C function") as info:
            build_network(spec)
        assert repr(spec) in str(info.value) and "model factory" in str(info.value)


def test_required_parameters_are_refused_without_calling(bad_module):
    for factory, parameter in (("needs_an_argument", "width"), ("needs_a_keyword", "width")):
        with pytest.raises(ConfigError) as info:
            build_network(f"{bad_module.__name__}:{factory}")
        message = str(info.value)
        assert "required parameters" in message and f"({parameter})" in message
        assert "no arguments" in message and "defaults" in message
    with pytest.raises(ConfigError, match=r"required parameters \(in_features, out_features\)"):
        build_network("torch.nn:Linear")
    assert bad_module.calls == []


def test_classes_that_are_not_modules_and_module_instances_are_refused(bad_module):
    with pytest.raises(ConfigError, match=r"class NotAModel, which is not an nn\.Module subclass"):
        build_network(f"{bad_module.__name__}:NotAModel")
    with pytest.raises(ConfigError, match=r"nn\.Module instance"):
        build_network(f"{bad_module.__name__}:an_instance")
    with pytest.raises(ConfigError, match="dunder attribute"):
        build_network(f"{bad_module.__name__}:__builtins__")
    assert bad_module.calls == []


def test_tools_and_bioattn_outside_models_are_refused():
    with pytest.raises(ConfigError, match="belongs to the tool 'pytest'"):
        build_network("pytest:main")
    with pytest.raises(ConfigError, match=r"bioattn itself, outside bioattn\.models"):
        build_network("bioattn.cli:main")


def test_real_factories_still_build(bad_module):
    name = bad_module.__name__
    assert build_network(f"{name}:make_linear").module[0].out_channels == 3
    assert build_network(f"{name}:make_wide").module[0].out_channels == 5
    assert build_network("tests.conftest:TinyNet").readout == "classifier"
    assert build_network("bioattn.models.zoo:FashionVGG").module.training is False
    assert bad_module.calls == [("make_linear", 3), ("make_linear", 5)]


def test_the_cli_refuses_os_getcwd_with_exit_status_2(capsys):
    assert main(["layers", "os:getcwd"]) == 2
    error = capsys.readouterr().err
    assert error.startswith("bioattn layers: error: ") and error.count("\n") == 1
    assert "'os:getcwd'" in error and "standard library" in error and "model factory" in error


# --- pickled objects in weight files -----------------------------------------------------------

RAN: list[str] = []


def _leave_a_trace(word: str) -> str:
    RAN.append(word)
    return word


class Payload:
    """Unpickling this calls a function: what a malicious checkpoint does."""

    def __reduce__(self):
        return (_leave_a_trace, ("unpickled",))


class BlockedPayload:
    """Unpickling this would call os.getcwd (torch blocks the os module outright)."""

    def __reduce__(self):
        return (os.getcwd, ())


@pytest.mark.parametrize("payload", [Payload, BlockedPayload])
def test_a_pickled_object_file_gets_a_plain_refusal(tmp_path, payload):
    path = tmp_path / "checkpoint.pth"
    torch.save({"weight": torch.zeros(2), "payload": payload()}, path)
    RAN.clear()
    with pytest.raises(WeightsError) as info:
        load_state_dict_file(path)
    assert RAN == []
    message = str(info.value)
    assert "checkpoint.pth" in message and "pickled Python code or objects" in message
    assert "bioattn will not run it" in message and "arbitrary code" in message
    assert "state = torch.load(path, weights_only=False)" in message
    assert "safetensors.torch.save_file({k: v.contiguous() for k, v in state.items()}" in message
    assert "torch.save(model.state_dict(), path)" in message
    assert "unreadable" not in message and "corrupt" not in message
    assert message.count("weights_only") == 1  # our conversion recipe, not torch's advice
    assert not any(advice in message for advice in TORCH_ADVICE)
    assert "\x1b[" not in message


def test_a_corrupt_file_does_not_quote_torch_advice(tmp_path):
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt") as info:
        load_state_dict_file(path)
    message = str(info.value)
    assert "weights_only" not in message
    assert not any(advice in message for advice in TORCH_ADVICE)


def test_the_conversion_recipe_in_the_message_works(tmp_path):
    """The advice is runnable as written, on a trusted file (a plain state dict)."""
    from safetensors.torch import save_file

    source = tmp_path / "trusted.pth"
    torch.save({"weight": torch.arange(6.0).reshape(2, 3).t()}, source)
    state = torch.load(source, weights_only=False)
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "weights.safetensors"))
    loaded = load_state_dict_file(tmp_path / "weights.safetensors")
    assert torch.equal(loaded["weight"], state["weight"])


def test_partial_of_a_standard_library_function_is_refused():
    """A partial is unwrapped: what matters is the function it calls."""
    import bioattn.models.zoo as zoo

    with pytest.raises(ConfigError, match="standard library"):
        zoo._refuse_non_factory("x:y", functools.partial(os.path.join, "a"))
