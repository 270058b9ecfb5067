"""Comparing two runs: the statistics by hand, and the table from small run folders on disk."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from raycifar.cli.args import run_cli
from raycifar.reading.compare import compare, exact_mcnemar_p, paired_gap, to_markdown, unpaired_gap
from raycifar.reading.report import METRICS
from raycifar.store.runs import RunFolderError



def write_run(root: Path, accs, speeds=None, labels=None, preds=None, finished=True,
              test_images=None) -> Path:
    """A run folder as `raycifar train` leaves it: metrics.csv, and when finished summary.json
    (and predictions.npz when given)."""
    root.mkdir(parents=True)
    speeds = speeds or [40.0] * len(accs)
    rows = [",".join(map(str, [e + 1, 0.1, 1.0, 0.5, 1.0, a, a, 100.0, s]))
            for e, (a, s) in enumerate(zip(accs, speeds))]
    (root / "metrics.csv").write_text(",".join(METRICS) + "\n" + "\n".join(rows) + "\n")
    if finished:
        n = test_images or (len(labels) if labels is not None else 1000)
        (root / "summary.json").write_text(json.dumps(
            {"final_test_acc": accs[-1], "test_images": n, "epochs": len(accs)}))
    if labels is not None:
        np.savez_compressed(root / "predictions.npz", labels=labels, preds=preds)
    return root


def paired_runs(tmp_path, n=1000, right_a=900, only_a=20, only_b=35):
    """Two finished runs on n images: `right_a` right in A, of which `only_a` wrong in B, and
    `only_b` images that only B gets right."""
    labels = np.arange(n) % 10
    wrong = (labels + 1) % 10
    pa, pb = wrong.copy(), wrong.copy()
    pa[:right_a] = labels[:right_a]
    pb[only_a:right_a] = labels[only_a:right_a]
    pb[right_a:right_a + only_b] = labels[right_a:right_a + only_b]
    acc_a, acc_b = right_a / n, (right_a - only_a + only_b) / n
    a = write_run(tmp_path / "a", [0.5, acc_a], labels=labels, preds=pa)
    b = write_run(tmp_path / "b", [0.6, acc_b], labels=labels, preds=pb)
    return a, b, acc_a, acc_b


def table_rows(md: str):
    return [line for line in md.splitlines() if line.startswith("|")]


from raycifar.cli import compare as script  # noqa: E402  (jobs/compare.py runs it)


@pytest.mark.parametrize("b, c, p", [
    (0, 0, 1.0),
    (1, 9, 2 * (1 + 10) / 2 ** 10),   # two-sided tail P(X <= 1), X ~ Bin(10, 1/2)
    (9, 1, 2 * (1 + 10) / 2 ** 10),   # symmetric in b and c
    (0, 5, 2 / 2 ** 5),
    (5, 5, 1.0),                      # an even split: the doubled tail passes 1, capped
    (3, 4, 1.0),
])
def test_exact_mcnemar_by_hand(b, c, p):
    assert exact_mcnemar_p(b, c) == pytest.approx(p, rel=1e-12)


def test_exact_mcnemar_stays_exact_for_thousands_of_discordant_images():
    # 2**5000 overflows a float; the integer tail must not. A 2,400:2,600 split is significant.
    p = exact_mcnemar_p(2400, 2600)
    assert 0 < p < 0.01
    assert exact_mcnemar_p(2500, 2500) == 1.0


def test_paired_gap_counts_the_discordant_images_and_its_standard_error():
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    a = np.array([0, 1, 2, 3, 9, 9, 9, 9])  # 4 right
    b = np.array([0, 1, 9, 9, 4, 5, 6, 9])  # 5 right: loses 2, 3; gains 4, 5, 6
    g = paired_gap(labels, a, b)
    assert (g.acc_a, g.acc_b, g.gap) == (0.5, 0.625, 0.125)
    assert (g.only_a, g.only_b, g.n, g.paired) == (2, 3, 8, True)
    d = np.array([0, 0, -1, -1, 1, 1, 1, 0])  # per image: right in B minus right in A
    assert g.se == pytest.approx(math.sqrt(d.var(ddof=1) / 8))
    assert g.p_value == pytest.approx(exact_mcnemar_p(2, 3))


def test_unpaired_error_is_the_two_binomial_errors_added():
    g = unpaired_gap(0.90, 0.91, 5000)
    assert g.se == pytest.approx(math.hypot(math.sqrt(0.09 / 5000), math.sqrt(0.91 * 0.09 / 5000)))
    assert unpaired_gap(0.9, 0.9, None).se is None
    assert not g.paired


def test_two_finished_runs_with_predictions_compare_paired(tmp_path):
    a, b, acc_a, acc_b = paired_runs(tmp_path)
    c = compare(str(a), str(b), tolerance=0.003)
    assert c.epoch == 2 and c.gap.paired and (c.gap.only_a, c.gap.only_b) == (20, 35)
    assert c.gap.gap == pytest.approx(acc_b - acc_a) == pytest.approx(0.015)
    assert c.within is False
    assert not c.notes  # both finished, both paired: nothing to caution about
    md = to_markdown(c, "albu", "gpu")
    assert "| gap (gpu - albu) | +1.50 points |" in md
    assert "| images right in albu only / gpu only | 20 / 35 |" in md
    assert f"| McNemar exact p (two-sided) | {exact_mcnemar_p(20, 35):.3g} |" in md
    assert "| within 0.30 points? | no |" in md
    assert "| 2 | 90.00 | 91.50 | +1.50 | 40.0 | 40.0 |" in md
    # The paired error is the one that matters; it is smaller than the unpaired one here.
    assert c.gap.se < unpaired_gap(acc_a, acc_b, 1000).se


def test_every_table_row_has_as_many_cells_as_its_header(tmp_path):
    a, b, *_ = paired_runs(tmp_path)
    md = to_markdown(compare(str(a), str(b), tolerance=0.003))
    blocks, current = [], []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    assert len(blocks) == 2
    for block in blocks:
        assert len({row.count("|") for row in block}) == 1, block


def test_an_unfinished_run_is_compared_at_the_last_common_epoch_and_says_so(tmp_path):
    a = write_run(tmp_path / "a", [0.5, 0.7, 0.8, 0.9], speeds=[20, 38, 38, 38])
    b = write_run(tmp_path / "b", [0.52, 0.71], speeds=[40, 40], finished=False)
    c = compare(str(a), str(b), tolerance=0.003)
    assert c.epoch == 2 and not c.gap.paired
    assert c.gap.acc_a == 0.7 and c.gap.acc_b == 0.71
    assert c.gap.n == 1000  # the test set size comes from the finished run's summary
    md = to_markdown(c)
    assert "not the final gap" in md and "unpaired standard error" in md
    # the tolerance is far below the noise of 1,000 images, and the table says so
    assert "cannot tell a gap of that size from noise" in md
    assert len([r for r in table_rows(md) if r.startswith("| ") and r[2].isdigit()]) == 2
    assert "A 29.0, B 40.0 images/s (B/A 1.38)" in md


def test_a_finished_run_without_predictions_falls_back_to_unpaired_and_names_it(tmp_path):
    labels = np.arange(100) % 10
    a = write_run(tmp_path / "a", [0.9], labels=labels, preds=labels)
    b = write_run(tmp_path / "b", [0.9], test_images=100)
    c = compare(str(a), str(b))
    assert not c.gap.paired and c.within is None
    assert any(f"no predictions.npz in {b}" in n for n in c.notes)


def test_runs_on_different_test_sets_are_refused(tmp_path):
    a = write_run(tmp_path / "a", [0.9], test_images=5000)
    b = write_run(tmp_path / "b", [0.9], test_images=10000)
    with pytest.raises(RunFolderError, match="different sets"):
        compare(str(a), str(b))
    labels = np.arange(100) % 10
    c = write_run(tmp_path / "c", [0.9], labels=labels, preds=labels)
    d = write_run(tmp_path / "d", [0.9], labels=labels[::-1].copy(), preds=labels)
    with pytest.raises(RunFolderError, match="different test labels"):
        compare(str(c), str(d))


def test_runs_without_a_common_epoch_or_folder_are_refused(tmp_path):
    a = write_run(tmp_path / "a", [0.9])
    with pytest.raises(RunFolderError, match="does not exist"):
        compare(str(a), str(tmp_path / "nope"))
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metrics.csv").write_text(",".join(METRICS) + "\n")
    with pytest.raises(RunFolderError, match="metrics.csv is malformed"):
        compare(str(a), str(empty))


def test_cli_writes_the_table_and_turns_bad_flags_into_exit_2(tmp_path, capsys):
    a, b, *_ = paired_runs(tmp_path)
    out = tmp_path / "cmp.md"
    argv = [str(a), str(b), "--names", "albu, gpu", "--tolerance", "2", "--out", str(out)]
    assert run_cli(script.main, script.build_parser(), argv) == 0
    assert capsys.readouterr().out.strip() == f"comparison: {out}"
    md = out.read_text()
    assert md.startswith("# gpu against albu") and "| within 2.00 points? | yes |" in md

    assert run_cli(script.main, script.build_parser(), [str(a), str(b)]) == 0
    assert "# B against A" in capsys.readouterr().out

    for bad, words in ((["--names", "one"], "--names takes two names"),
                       (["--tolerance", "-1"], "--tolerance must be >= 0")):
        assert run_cli(script.main, script.build_parser(), [str(a), str(b)] + bad) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("raycifar compare: error: ") and words in err[0]
    assert run_cli(script.main, script.build_parser(), [str(a), str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
