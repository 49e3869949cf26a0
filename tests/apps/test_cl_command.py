"""The ``cl`` command as a user meets it: help with defaults, refused options, progress, results
written as they exist, the edge-of-grid warning, checks before any work."""

from __future__ import annotations

import json

import pytest

from fisherkit.apps.cli import main as cli_main
from fisherkit.apps.continual import command, experiment
from fisherkit.apps.errors import UsageError

SMALL = ["cl", "--scenario", "split-digits", "--seeds", "1", "--epochs", "1", "--hidden", "8"]


def test_help_shows_every_default_and_says_what_a_strength_means(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["cl", "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for words in ("--seeds SEEDS seeds 0 … N−1 per method (default: 3)", "training epochs per task (default: 2;",
                  "Adam's learning rate (default: 0.001; set by a --protocol)",
                  "hidden layer widths of the MLP (default: [256, 256]; set by a --protocol)",
                  "torch threads", "chosen on validation data", "one value for every regularized method"):  # fmt: skip
        assert words in text, words


@pytest.mark.parametrize(
    "options, words",
    [
        (["--scenario", "split-digits", "--train-per-task", "100"], "--train-per-task applies to permuted scenarios"),
        (["--scenario", "permuted-digits", "--setting", "class"], "--setting applies to split scenarios"),
        (["--scenario", "split-digits", "--data-dir", "."], "--data-dir applies to the \\*-idx scenarios"),
        (["--plot", "no/such/dir/out.png"], "--plot no/such/dir/out.png: the directory no/such/dir does not exist"),
        (["--out", "no/such/dir/r.json"], "--out no/such/dir/r.json: the directory no/such/dir does not exist"),
        (["--threads", "0"], "--threads and --jobs must be at least 1"),
        (["--jobs", "0"], "--threads and --jobs must be at least 1"),
        (["--iterations", "0"], "--iterations must be at least 1; got 0"),
    ],
)
def test_options_that_cannot_apply_are_refused_before_any_work(options, words, capsys):
    with pytest.raises(SystemExit, match=words):
        cli_main(["cl", *options])
    assert "trained" not in capsys.readouterr().err  # nothing ran


def test_progress_results_and_the_record_appear_as_each_method_finishes(tmp_path, capsys, monkeypatch):
    out = tmp_path / "results.json"
    finished = []
    real = command.run_method

    def stop_after_the_first(*args, **kwargs):
        if finished:
            raise KeyboardInterrupt  # the user stops the run during the second method
        finished.append(real(*args, **kwargs))
        return finished[-1]

    monkeypatch.setattr(command, "run_method", stop_after_the_first)
    with pytest.raises(KeyboardInterrupt):
        cli_main([*SMALL, "--methods", "naive", "ewc", "--strength", "1", "--out", str(out)])
    captured = capsys.readouterr()
    assert "naive, seed 0: task 1/5 trained" in captured.err and "task 5/5 trained" in captured.err
    assert "settings: split-digits, task-incremental, 5 tasks; MLP 8, Adam lr 0.001, 1 epochs per task" in captured.out
    assert "naive: average accuracy" in captured.out
    record = json.loads(out.read_text())
    assert [m["method"] for m in record["methods"]] == ["naive"]
    matrix = record["methods"][0]["accuracy_matrices"][0]
    assert len(matrix) == 5 and all(len(row) == 5 for row in matrix)
    assert record["seeds"] == [0] and record["settings"]["epochs"] == 1


def test_a_search_that_picks_the_edge_of_its_grid_says_so(capsys, monkeypatch):
    monkeypatch.setitem(experiment.STRENGTH_GRIDS, "ewc", (1.0, 10.0))  # every choice is an edge
    cli_main([*SMALL, "--tasks", "2", "--methods", "ewc", "--search"])
    out = capsys.readouterr().out
    assert "ewc: validation average accuracy by strength {1: " in out
    assert "warning: ewc's search picked the edge of its grid" in out and "pass --strength" in out


def test_debug_shows_the_error_itself_instead_of_one_line():
    with pytest.raises(SystemExit, match=r"at least 1; got 0 and 1. \(fisherkit --debug shows the traceback\)"):
        cli_main(["cl", "--threads", "0"])
    with pytest.raises(UsageError, match="--threads and --jobs must be at least 1"):
        cli_main(["--debug", "cl", "--threads", "0"])


def test_parallel_jobs_give_the_matrices_of_one_process(tmp_path, capsys):
    records = []
    for jobs in ("1", "2"):
        out = tmp_path / f"jobs{jobs}.json"
        cli_main([*SMALL, "--tasks", "2", "--seeds", "2", "--methods", "naive", "ewc", "--strength", "1",
                  "--jobs", jobs, "--out", str(out)])  # fmt: skip
        records.append(json.loads(out.read_text())["methods"])
    assert records[0] == records[1]
    assert "ewc (1): average accuracy" in capsys.readouterr().out
