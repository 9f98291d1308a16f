"""bench/report.py's target table: the issue's target per row, and whether it needs more than the peak."""
import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_target_of(report):
    assert report.target_of("lstm-t100-b16-i256-h256", "forward") == 1.5
    assert report.target_of("lstm-t100-b1-i128-h128", "forward") == 1.5
    assert report.target_of("lstm-t50-b64-i512-h512", "forward") == 1.0
    assert report.target_of("gru-t50-b64-i512-h512", "training") == 1.3
    for problem in ("lstm-t100-b1-i128-h128", "lstm-t50-b64-i512-h512"):   # 1 thread: on par with the best peer
        for mode in ("forward", "training"):
            assert report.target_of(problem, mode, threads=1) == 1.0
    assert report.peak_share_target("lstm-t50-b64-i512-h512", "forward", threads=1) is None


def test_targets_table_flags_needs_above_the_peak(report):
    def eng(fr_ms, peer_ms, flops):
        return {"fastrnn": {"median": fr_ms / 1e3, "gflops": flops / fr_ms / 1e6},
                "torch": {"median": peer_ms / 1e3, "gflops": flops / peer_ms / 1e6}}

    rows = {("lstm", "lstm-t50-b64-i512-h512", "training", 2): eng(300.0, 340.0, 40.3e9),  # torch 118.5 GFLOP/s
            ("lstm", "lstm-t28-b64-i28-h64", "training", 2): eng(2.0, 3.0, 0.1e9),
            ("gru", "gru-t50-b64-i512-h512", "forward", 2): eng(100.0, 90.0, 10e9)}
    text = report.targets_table(rows, {2: {"numpy": 140.0}})
    lines = {tuple(line.split(" | ")[:2]): line for line in text.splitlines()[2:]}
    assert lines[("| lstm", "t50-b64-i512-h512")].endswith("| no (above peak) |")  # 1.3 * 118.5 = 154 > 140
    assert lines[("| lstm", "t28-b64-i28-h64")].endswith("| yes |")                # 1.5x >= 1.3x
    gru = lines[("| gru", "t50-b64-i512-h512")]
    assert "| 1.0x | 0.90x |" in gru and gru.endswith("| no |")                     # slower, within the peak


def test_targets_table_asks_85_percent_of_the_peak_at_large_batch(report):
    def eng(fr_gflops, peer_gflops):
        return {"fastrnn": {"median": 1.0 / fr_gflops, "gflops": fr_gflops},
                "torch": {"median": 1.0 / peer_gflops, "gflops": peer_gflops}}

    rows = {("lstm", "lstm-t50-b64-i512-h512", "forward", 2): eng(100.0, 90.0),     # faster, 50% of the peak
            ("gru", "gru-t50-b64-i512-h512", "forward", 2): eng(180.0, 150.0),      # faster, 90%
            ("lstm", "lstm-t50-b16-i512-h512", "forward", 2): eng(100.0, 60.0),     # B = 16: no share target
            ("gru", "gru-t50-b128-i512-h512", "training", 2): eng(100.0, 70.0),     # training: none either
            ("simple_rnn", "simple_rnn-t50-b64-i512-h512", "forward", 1): eng(100.0, 90.0)}  # 1 thread: none
    text = report.targets_table(rows, {2: {"numpy": 200.0}})
    lines = {tuple(line.split(" | ")[:2]): line for line in text.splitlines()[2:]}
    assert lines[("| lstm", "t50-b64-i512-h512")].endswith("| no (50% of peak < 85%) |")
    assert lines[("| gru", "t50-b64-i512-h512")].endswith("| yes |")
    assert lines[("| lstm", "t50-b16-i512-h512")].endswith("| yes |")
    assert lines[("| gru", "t50-b128-i512-h512")].endswith("| yes |")
    one = lines[("| simple_rnn", "t50-b64-i512-h512")]
    assert "| 1 | 1.0x |" in one and one.endswith("| yes |")                          # on par, no peak share
    assert report.peak_share_target("simple_rnn-t28-b64-i28-h64", "forward") == 0.85
    assert report.peak_share_target("simple_rnn-t28-b64-i28-h64", "training") is None


def test_best_keeps_each_engines_lowest_median(report, tmp_path):
    import json

    def run(path, fr, peer):
        bms = [{"stats": {"median": m}, "extra_info": {"engine": e, "flops": 1e9, "threads": 2, "cell": "lstm",
                                                        "problem": "lstm-t2-b1-i3-h4", "mode": "forward"}}
               for e, m in (("fastrnn", fr), ("torch", peer))]
        path.write_text(json.dumps({"benchmarks": bms}))
        return str(path)

    a, b = run(tmp_path / "a.json", 1.0, 3.0), run(tmp_path / "b.json", 2.0, 1.5)
    key = ("lstm", "lstm-t2-b1-i3-h4", "forward", 2)
    last, _ = report.load([a, b])
    best, _ = report.load([a, b], best=True)
    assert (last[key]["fastrnn"]["median"], last[key]["torch"]["median"]) == (2.0, 1.5)
    assert (best[key]["fastrnn"]["median"], best[key]["torch"]["median"]) == (1.0, 1.5)


def test_fastrnn_under_a_framework_is_never_the_best_peer(report):
    """fastrnn.torch (fastrnn's kernels in torch.nn's modules) is ours: the speedup is over the real peers,
    and the summary compares it with torch.nn's modules."""
    eng = {"fastrnn": {"median": 1.0, "gflops": 1.0}, "fastrnn.torch": {"median": 1.2, "gflops": 0.8},
           "torch": {"median": 3.0, "gflops": 0.3}, "onnxruntime": {"median": 2.0, "gflops": 0.5}}
    assert report.best_peer(eng)[0] == "onnxruntime"
    assert report.speedup_of(eng) == ("onnxruntime", 2.0)
    text = report.summary({("lstm", "lstm-t1-b1-i1-h1", "training", 2): eng})
    assert "fastrnn.torch's modules faster than torch.nn's in 1/1 problems; geometric mean 2.50x" in text
