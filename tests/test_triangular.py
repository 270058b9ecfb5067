"""The triangular cyclic LR (torch's CyclicLR driven on a tiny optimizer) at its knots."""

import numpy as np
import pytest

from raycifar.recipe.schedule import triangular_lrs


def test_knots_base_peak_base():
    lrs = triangular_lrs(0.01, 0.1, step_size=4, cycles=2)
    assert len(lrs) == 2 * 4 * 2 + 1
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[4] == pytest.approx(0.1)
    assert lrs[8] == pytest.approx(0.01)
    assert lrs[12] == pytest.approx(0.1)           # second cycle is the same triangle
    assert lrs[-1] == pytest.approx(0.01)
    assert min(lrs) == pytest.approx(0.01) and max(lrs) == pytest.approx(0.1)


def test_linear_between_knots():
    lrs = np.array(triangular_lrs(0.02, 0.2, step_size=5, cycles=3))
    diffs = np.diff(lrs)
    slope = (0.2 - 0.02) / 5
    for start in range(0, len(diffs), 10):
        np.testing.assert_allclose(diffs[start:start + 5], slope, rtol=1e-9)
        np.testing.assert_allclose(diffs[start + 5:start + 10], -slope, rtol=1e-9)
    assert lrs[2] == pytest.approx(0.02 + 2 * slope)


def test_step_size_one_alternates():
    assert triangular_lrs(0.0, 1.0, step_size=1, cycles=2) == pytest.approx([0, 1, 0, 1, 0])


@pytest.mark.parametrize("args", [(0.1, 0.1, 3, 1), (0.2, 0.1, 3, 1), (0.01, 0.1, 0, 1),
                                  (0.01, 0.1, 3, 0), (-0.1, 0.1, 3, 1)])
def test_bad_arguments_are_refused(args):
    with pytest.raises(ValueError, match="base_lr < max_lr"):
        triangular_lrs(*args)


def test_triangle_cli_writes_the_plot_and_rejects_bad_bounds(tmp_path, capsys):
    from raycifar.cli.tune import cli as main

    out = tmp_path / "tri.png"
    assert main(["triangle", "--base-lr", "0.01", "--max-lr", "0.1", "--step-size", "10",
                 "--cycles", "2", "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    assert "41 iterations" in capsys.readouterr().out
    assert main(["triangle", "--base-lr", "1", "--max-lr", "0.1", "--out", str(out)]) == 2
    assert "error: need step_size" in capsys.readouterr().err
