"""Model specs: build_model by "module:function" and "file.py:function", the errors, and RunConfig's check."""

from __future__ import annotations

import sys
import textwrap

import pytest
from auglocal.engine.config import RunConfig, UsageError, validate
from auglocal.engine.models import LayeredModel, build_model, model_spec_of, resolve_spec
from auglocal.engine.models.imports import PRIVATE_PREFIX

from tests.engine import spec_models

MOD = "tests.engine.spec_models"


def test_a_module_spec_calls_the_function_with_what_it_accepts():
    spec_models.CALLS.clear()
    model = build_model(f"{MOD}:tiny_resnet", 7, 32)
    assert isinstance(model, LayeredModel) and model.num_classes == 7 and model.name == "resnet20"
    assert spec_models.CALLS == [{"num_classes": 7, "input_size": 32}]
    build_model(f"{MOD}:only_classes", 5, 32)
    assert spec_models.CALLS[-1] == {"num_classes": 5}
    assert build_model(f"{MOD}:no_arguments", 3, 32).num_layers == 10


def test_a_registered_name_is_unchanged():
    assert build_model("resnet20", 10, 32).name == "resnet20"
    with pytest.raises(ValueError, match=r"unknown model 'resnet21'; choose one of: .*resnet20"):
        build_model("resnet21")


def _write_script(tmp_path, body: str):
    path = tmp_path / "user_script.py"
    path.write_text(textwrap.dedent(body))
    return path


def test_a_file_spec_loads_the_file_once_under_a_private_name(tmp_path):
    path = _write_script(tmp_path, """
        from auglocal.engine.models import build_model
        LOADS = []
        LOADS.append(1)

        def net(input_size):
            return build_model("resnet20", 4, input_size)

        if __name__ == "__main__":
            raise SystemExit("the guarded part must not run when the engine loads the file")
    """)
    spec = f"{path}:net"
    first, second = build_model(spec, 10, 32), build_model(spec, 10, 32)
    assert first.num_classes == second.num_classes == 4
    fn = resolve_spec(spec)
    module = sys.modules[fn.__module__]
    assert fn.__module__.startswith(PRIVATE_PREFIX) and module.LOADS == [1]
    # a function of the loaded script names itself by the script's path, so it round-trips
    assert model_spec_of(fn) == f"{path.resolve()}:net"


def test_model_spec_of_names_importable_functions_only():
    assert model_spec_of(spec_models.small_cnn) == f"{MOD}:small_cnn"
    assert resolve_spec(model_spec_of(spec_models.small_cnn)) is spec_models.small_cnn
    with pytest.raises(ValueError, match="lambda"):
        model_spec_of(lambda: None)

    def nested():
        return None
    with pytest.raises(ValueError, match="inside another function"):
        model_spec_of(nested)


@pytest.mark.parametrize("spec, words", [
    ("tests.engine.no_such_module:f", ["no_such_module", "ModuleNotFoundError", "cannot import module"]),
    (f"{MOD}:missing", ["AttributeError", f"module '{MOD}' has no function 'missing'"]),
    (f"{MOD}:NOT_CALLABLE", ["'NOT_CALLABLE'", "is not callable", "int"]),
    ("/no/such/dir/model.py:f", ["/no/such/dir/model.py", "does not exist"]),
])
def test_import_failures_name_the_spec_and_the_cause(spec, words):
    with pytest.raises(ValueError) as err:
        resolve_spec(spec)
    assert f"model spec {spec!r}" in str(err.value)
    for word in words:
        assert word in str(err.value)


def test_a_script_that_fails_to_run_is_reported(tmp_path):
    path = _write_script(tmp_path, "raise RuntimeError('broken script')\n")
    with pytest.raises(ValueError, match=r"running .*user_script.py failed: RuntimeError: broken script"):
        resolve_spec(f"{path}:net")


def test_a_function_returning_something_else_is_named():
    with pytest.raises(ValueError, match=r"not_a_model\(\) returned an object of type int; it must return a Layered"):
        build_model(f"{MOD}:not_a_model")


def test_validate_resolves_specs_and_keeps_the_unknown_name_message():
    validate(RunConfig(model=f"{MOD}:tiny_resnet"))
    with pytest.raises(UsageError, match=r"--model: model spec .*has no function 'nope'"):
        validate(RunConfig(model=f"{MOD}:nope"))
    with pytest.raises(UsageError, match=r"^unknown model 'resnet21'; choose one of: "):
        validate(RunConfig(model="resnet21"))
