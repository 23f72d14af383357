"""The one progress display: log lines when output is not a terminal, one loop shown at a time."""

from __future__ import annotations

import logging

from netformer.progress import Progress, progress


def test_progress_lines_in_logs_and_one_loop_at_a_time(caplog):
    with caplog.at_level(logging.DEBUG, logger="netformer.progress"):
        assert list(progress(range(20), "outer work", unit="chunk")) == list(range(20))
        lines = [r for r in caplog.records if r.levelno == logging.INFO]
        assert len(lines) == 10 and lines[-1].getMessage().startswith("outer work: 20/20 chunks (100%)")
        caplog.clear()
        with Progress(2, "training", unit="batch") as outer:
            for _ in range(2):
                for _ in progress(range(4), "embedding"):
                    pass
                outer.update()
        info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
        debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
        assert all(m.startswith("training") for m in info) and len(info) == 2 and "2/2 batches" in info[-1]
        assert debug and all(m.startswith("embedding") for m in debug)  # the inner loop: DEBUG only
    # a resumed job starts where it was and logs from the next mark on
    p = Progress(10, "resumed", initial=7)
    p.update(3)
    p.close()
    assert p.done == 10
