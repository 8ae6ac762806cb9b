"""The one logger of the long jobs (mladv.logs)."""
from __future__ import annotations

import re

from mladv.logs import quiet_log, run_log, stderr_log


def test_stderr_log_writes_one_line_to_stderr_only(capsys):
    stderr_log("hello")
    assert capsys.readouterr() == ("", "hello\n")


def test_run_log_tees_time_stamped_lines_to_log_txt_and_appends(tmp_path):
    seen: list[str] = []
    log = run_log(seen.append, tmp_path / "run")
    log("first")
    run_log(seen.append, tmp_path / "run")("second")  # a resumed run appends
    assert seen == ["first", "second"]
    lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert [re.sub(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ", "", x) for x in lines] == [
        "first", "second"]
    assert all(re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  ", x) for x in lines)


def test_run_log_of_another_rank_is_quiet_and_writes_nothing(tmp_path):
    seen: list[str] = []
    log = run_log(seen.append, tmp_path, main_process=False)
    log("x")
    assert log is quiet_log and seen == [] and not (tmp_path / "log.txt").exists()
