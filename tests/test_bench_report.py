"""bench/report.py's target table: the issue's target per row, and whether it needs more than the peak."""
import importlib.util
import pathlib
import sys

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


def test_interleaved_rounds_give_the_median_of_their_medians(report, tmp_path):
    """An engine timed in interleaved rounds is one row entry: the median of its rounds' medians, its
    calls summed, each round's median kept."""
    import json

    ex = {"flops": 1e9, "threads": 2, "cell": "gru", "problem": "gru-t2-b1-i3-h4", "mode": "forward"}
    bms = [{"stats": {"median": m, "rounds": 5}, "extra_info": dict(ex, engine=e, round=r, rounds=3)}
           for r, (fr, peer) in enumerate([(1.0, 2.0), (4.0, 2.5), (2.0, 9.0)])
           for e, m in (("fastrnn", fr), ("torch", peer))]
    path = tmp_path / "rounds.json"
    path.write_text(json.dumps({"benchmarks": bms}))
    rows, _ = report.load([str(path)])
    eng = rows[("gru", "gru-t2-b1-i3-h4", "forward", 2)]
    assert (eng["fastrnn"]["median"], eng["torch"]["median"]) == (2.0, 2.5)
    assert eng["fastrnn"]["round_medians"] == [1.0, 4.0, 2.0] and eng["fastrnn"]["rounds"] == 15
    assert eng["fastrnn"]["gflops"] == pytest.approx(0.5)
    assert report.speedup_of(eng) == ("torch", 1.25)


def test_bench_cases_interleave_the_engines_of_a_problem(monkeypatch):
    """bench/cases.build_cases: per problem and mode, `rounds` back-to-back rounds of every engine, each
    round's order rotated by one, the numpy reference in round 0 only, every id unique."""
    for sub in ("bench", "tests"):
        monkeypatch.syspath_prepend(str(ROOT / sub))
    spec = importlib.util.spec_from_file_location("bench_cases", ROOT / "bench" / "cases.py")
    cases = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_cases", cases)   # (dataclasses look their module up)
    spec.loader.exec_module(cases)

    one = cases.build_cases(quick=True)
    three = cases.build_cases(quick=True, rounds=3)
    assert len({c.id for c in three}) == len(three)
    assert [c.id for c in one] == [f"{c.problem.id}-{c.mode}-{c.engine}" for c in one]
    groups = {}
    for c in three:
        groups.setdefault((c.problem, c.mode), []).append(c)
    assert len(groups) == len({(c.problem, c.mode) for c in one})
    for (problem, mode), cs in groups.items():
        engines = [c.engine for c in one if (c.problem, c.mode) == (problem, mode)]
        # each group's cases are contiguous in the run order
        first = three.index(cs[0])
        assert three[first:first + len(cs)] == cs
        for r in range(3):
            names = [c.engine for c in cs if c.round == r]
            k = r % len(engines)
            assert names == [e for e in engines[k:] + engines[:k] if e != "reference" or r == 0]
        assert [c.last_round for c in cs].count(True) == len(engines)


def test_bench_interleave_option(monkeypatch):
    """bench/conftest's round count: --interleave, else FASTRNN_BENCH_INTERLEAVE, else 3 (1 with --quick);
    a count below 1 or a non-integer is a UsageError naming what came."""
    for sub in ("bench", "tests"):
        monkeypatch.syspath_prepend(str(ROOT / sub))
    spec = importlib.util.spec_from_file_location("bench_conftest", ROOT / "bench" / "conftest.py")
    conf = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "bench_conftest", conf)
    spec.loader.exec_module(conf)

    class Config:
        def __init__(self, interleave=None, quick=False):
            self.opts = {"interleave": interleave, "quick": quick}

        def getoption(self, name):
            return self.opts[name]

    monkeypatch.delenv("FASTRNN_BENCH_INTERLEAVE", raising=False)
    assert conf._interleave(Config()) == 3
    assert conf._interleave(Config(quick=True)) == 1
    assert conf._interleave(Config(interleave=5, quick=True)) == 5
    monkeypatch.setenv("FASTRNN_BENCH_INTERLEAVE", "2")
    assert conf._interleave(Config()) == 2
    assert conf._interleave(Config(interleave=4)) == 4
    for bad_env, bad_opt, match in (("x", None, "FASTRNN_BENCH_INTERLEAVE.*'x'"), ("0", None, "got 0"),
                                    ("", -1, "got -1")):
        monkeypatch.setenv("FASTRNN_BENCH_INTERLEAVE", bad_env)
        with pytest.raises(pytest.UsageError, match=match):
            conf._interleave(Config(interleave=bad_opt))
