"""scripts/vocabulary-cost.py, whose figures docs/design.md quotes ("Stage and vocabulary cost on CPU"), still runs
against the runtime's API and names the nodes whose time grows with the vocabulary."""

import os
import re
import subprocess
import sys

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "scripts", "vocabulary-cost.py")


def test_vocabulary_cost_reports_stages_ratio_and_the_nodes_that_grow(artefacts):
    result = subprocess.run([sys.executable, SCRIPT, artefacts["portable"], "--threads", "1", "--pairs", "1",
                             "--profile", "--split", "on", "off"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert out.count("(split on)") == 2 and out.count("(split off)") == 2, out  # stage times and profile each
    for k in (1, 1203):
        assert re.search(rf"K = {k}: pre [\d.]+ ms, model [\d.]+ ms, post [\d.]+ ms, end to end [\d.]+ ms", out), out
    assert re.search(r"end to end K = 1203 / K = 1: [\d.]+x", out), out
    growth = re.findall(r"^ +([+-][\d.]+) ms +[\d.]+ -> +[\d.]+  (\S+)$", out, re.M)
    assert len(growth) == 30, out
    # the embedded model's SEVE attention over the K class texts is what grows (docs/design.md, "SEVE"). Judged by
    # how many of each profile's 15 nodes are SEVE's, not by their times: node medians on a loaded machine put a few
    # other nodes on top (seen: a LayerNormalization at +2.3 ms, a Transpose and a MatMul at +7.5 ms, while other
    # tests shared the two cores), so a sum of times failed, but never most of the list. SEVE holds ~20 of the
    # graph's ~300 nodes: 8 of 15 by chance is all but impossible.
    for listed in (growth[:15], growth[15:]):
        assert sum("/seve." in name for _, name in listed) >= 8, out
