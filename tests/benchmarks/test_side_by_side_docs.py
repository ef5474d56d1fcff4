"""The side-by-side scripts: the synthetic run rewrites only its own part of the docs; the served one picks, for each
recall target, the smallest setting that reaches it."""

import numpy as np

from benchmarks.served_side_by_side import TARGETS, sweep
from benchmarks.side_by_side import write_section


def test_the_synthetic_rerun_keeps_the_served_headline(tmp_path):
    doc = tmp_path / "b.md"
    doc.write_text("# B\n\n## Side by side\n\n### On the vectors M5 serves\n\nHEADLINE\n\n### On synthetic vectors\n\nOLD\n\n## GPU\n\nG\n")
    write_section(doc, "### On synthetic vectors\n\nNEW\n")
    text = doc.read_text()
    assert "HEADLINE" in text and "NEW" in text and "OLD" not in text and text.index("NEW") < text.index("## GPU")
    fresh = tmp_path / "c.md"
    write_section(fresh, "### On synthetic vectors\n\nNEW\n")
    assert "## Side by side\n\n### On synthetic vectors\n\nNEW" in fresh.read_text()


def test_each_target_gets_the_smallest_setting_that_reaches_it():
    truth = np.arange(100).reshape(10, 10)
    recall_of = {1: 0.9, 2: 0.96, 4: 0.985, 8: 0.999}

    def search(queries, effort):  # recall@10 of recall_of[effort] over the 10 queries
        hits = int(round(recall_of[effort] * 100))
        got = np.full((10, 10), -1)
        got.flat[:hits] = truth.flat[:hits]
        return got if len(queries) == 10 else got[:1]

    res = sweep("fake", search, [1, 2, 4, 8], np.zeros((10, 3), np.float32), truth, 0.0)
    assert [res["at"][str(t)]["effort"] for t in TARGETS] == [2, 4, 8]
    assert res["curve"][-1][0] == 8
