"""Predicted and simulated images/s keep their significant digits: a slow (or skewed) prediction never reads
"0.0 images/s" (issue 22, case 3), while ordinary rates print as before."""

import pytest
from auglocal.engine.config import RunConfig, build_data, build_network, resolve
from auglocal.engine.local_module import build_local_modules
from auglocal.engine.planning import make_plan
from auglocal.engine.planning.plan import format_rate
from auglocal.engine.planning.simulator import dry_run_line


@pytest.mark.parametrize("value, text", [
    (0.0, "0.0"), (0.000417, "0.000417"), (1.234e-7, "1.23e-07"), (0.5, "0.5"), (1.0, "1.0"),
    (53.3333, "53.3"), (12345.67, "12,345.7"), (float("inf"), "inf"),
])
def test_format_rate(value, text):
    assert format_rate(value) == text


def test_a_slow_plan_and_its_simulation_print_their_digits():
    cfg = RunConfig(model="resnet20", rule="auglocal", d=3, dataset="synthetic", input_size=16, num_classes=4,
                    train_size=16, test_size=8, batch_size=8, epochs=1)
    data = build_data(cfg)
    resolve(cfg, data)
    network = build_network(cfg, data)
    modules = build_local_modules(*network)
    plan = make_plan(modules, 2, batch_size=8, costs=[1e4] * len(modules))      # hours per module
    text = plan.format()
    assert " 0.0 images/s" not in text
    assert f"predicted {format_rate(plan.predicted_images_per_s)} images/s" in text
    assert 0 < plan.predicted_images_per_s < 0.05          # one decimal would have printed 0.0
    line = dry_run_line(cfg, data, plan, cpu_workers=True, network=network)
    assert " 0.0 images/s" not in line and "(plan predicts 0.0)" not in line, line
