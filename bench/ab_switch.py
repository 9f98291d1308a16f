"""fastrnn against itself with one engine switch on and off, alternating in one process: the same-run
ratios behind bench/NOTES.md 31-34.

    python bench/ab_switch.py SWITCH CELL T B I H [--threads N] [--train] [--rounds R] [--engine E]

SWITCH (the "on" side first; the ratio is on / off):
  simd        AVX-512 builds (simd level 2) vs AVX2 (level 1)        engine.limit_simd
  serpentine  one-row products alternate their panel order vs not    engine.serpentine
  scratch     the scratch pool vs fresh buffers every call           fastrnn._scratch.MIN_BYTES
  packed      the packed-R microkernel where the plan allows vs BLAS fastrnn._dispatch.packed_gemm
  gemm        the hoisted GEMMs on the packed microkernel vs BLAS    engine.packed_gemm
  packrows    the packed-R microkernel at any rows a thread vs the rule fastrnn._dispatch.PACK_MAX_ROWS
              (the rule bounds the AVX2 build only: a no-op at simd level 2)
  hidden      the hidden-unit split forced for any batch vs the rule  fastrnn._dispatch.HIDDEN_SPLIT_MAX_B
  threads     2 threads vs 1                                         fastrnn.set_num_threads
  prepared    forward on fastrnn.functional.prepare's frozen weights vs the per-call functional API
  wpanels     with packs kept, W's panels kept for the projection too vs R's only   engine.keep_w_panels
  fused       B == 1: the input projection inside the recurrent product vs hoisted   fastrnn._dispatch.fused_projection
  longpanels  B == 1 calls of T >= 32 on vector panels at any width vs from G*H >= 512 only
              (fastrnn._dispatch.PACK_ONE_ROW_MIN_T)
  narrowpanels with packs kept (prepare, cells), one-row products on vector panels at any width vs
              from G*H >= 512 only (fastrnn._dispatch.cpu_plan's packs_kept)
  adaptive    the hidden split choosing team or one thread by their measured times vs always the team
              engine.adaptive_team (pool.h, fr_pool_run_adaptive)
  concat      B >= 2, narrow input: the projection folded into each step's product vs hoisted
              fastrnn._dispatch.concat_product (the rule bounds the AVX2 build only)
  widecat     the concatenated product at any input width and [W; R] size vs the rule's bounds
              (fastrnn._dispatch.CONCAT_MAX_I, CONCAT_MAX_BYTES)
  hinout      unmasked inference: h kept in the output rows vs a state slot copied to them
              engine.h_in_out (_engine.pyx, Output rows as state)
  nextpanel   the AVX2 microkernel's few-row passes over long panels prefetching the next panel vs
              FR_PF rows ahead in their own   engine.next_panel_prefetch (gates_avx2.c)
  torchnode   fastrnn.torch's modules as one node on torch.nn's parameters vs the custom-op route
              (fastrnn.torch.torch_layout_ok); with --engine fastrnn.torch

Each round times both sides for ~0.4 s each (median per call); prints the medians over rounds and
their ratio.  The data and the checked call are the bench's (bench/cases.py, tests/problems.py).
"""
import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..", "tests")]

import cases  # noqa: E402
import fastrnn  # noqa: E402
from engines import ENGINES  # noqa: E402
from fastrnn import _dispatch, _scratch  # noqa: E402
from fastrnn._native import engine  # noqa: E402
from problems import Problem  # noqa: E402

_PACK_MAX_ROWS = _dispatch.PACK_MAX_ROWS   # the rule, for packrows' "off" side


def _scratch_switch(on):
    _scratch.MIN_BYTES = 1 << 20 if on else 1 << 62
    if not on:
        _scratch.clear()


_REAL_PLAN = _dispatch.cpu_plan


def _plan_wide_kept_only(spec, training, threads=None, packs_kept=False):
    """cpu_plan as before NOTES 38: kept packs count for one-row products of G*H >= 512 columns only."""
    wide = spec.G * spec.H >= _dispatch.PACK_MIN_COLUMNS
    return _REAL_PLAN(spec, training, threads, packs_kept and wide)


def _set_plan_input(name, value):
    """A constant (or the function) of fastrnn._dispatch the plans read, set; plans kept for repeated
    signatures (the prepared calls) are made again."""
    setattr(_dispatch, name, value)
    _dispatch.plans_changed()


SWITCHES = {
    "simd": lambda on: engine.limit_simd(2 if on else 1),
    "serpentine": lambda on: engine.serpentine(on),
    "scratch": _scratch_switch,
    "packed": lambda on: _dispatch.packed_gemm(on),
    "gemm": lambda on: engine.packed_gemm(on),
    "packrows": lambda on: _set_plan_input("PACK_MAX_ROWS", 1 << 20 if on else _PACK_MAX_ROWS),
    "hidden": lambda on: _set_plan_input("HIDDEN_SPLIT_MAX_B", 1 << 20 if on else 4),
    "threads": lambda on: fastrnn.set_num_threads(2 if on else 1),
    "prepared": lambda on: setattr(ENGINES["fastrnn"], "use_prepared", on),
    "wpanels": lambda on: engine.keep_w_panels(on),
    "fused": lambda on: _dispatch.fused_projection(on),
    "longpanels": lambda on: _set_plan_input("PACK_ONE_ROW_MIN_T", 32 if on else 1 << 30),
    "narrowpanels": lambda on: _set_plan_input("cpu_plan", _REAL_PLAN if on else _plan_wide_kept_only),
    "adaptive": lambda on: engine.adaptive_team(on),
    "concat": lambda on: _dispatch.concat_product(on),
    "widecat": lambda on: _widecat_switch(on),
    "hinout": lambda on: engine.h_in_out(on),
    "nextpanel": lambda on: engine.next_panel_prefetch(on),
    "torchnode": lambda on: _torch_node_switch(on),
}


_CONCAT_RULE = (_dispatch.CONCAT_MAX_I, _dispatch.CONCAT_MAX_BYTES)


def _widecat_switch(on):
    """The concatenated product at any input width and [W; R] size vs the rule's bounds."""
    for name, rule in zip(("CONCAT_MAX_I", "CONCAT_MAX_BYTES"), _CONCAT_RULE):
        _set_plan_input(name, 1 << 40 if on else rule)


def _torch_node_switch(on):
    import fastrnn._torch_autograd as bridge
    import fastrnn.torch as ft

    ft.torch_layout_ok = bridge.torch_layout_ok if on else (lambda *tensors: False)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("switch", choices=sorted(SWITCHES))
    ap.add_argument("cell", choices=["lstm", "gru", "simple_rnn"])
    ap.add_argument("shape", nargs=4, type=int, metavar="T B I H")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--train", action="store_true")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--engine", default="fastrnn", choices=sorted(ENGINES),
                    help="whose calls are timed (bench/engines.py); fastrnn.torch for torchnode")
    args = ap.parse_args()
    if args.switch == "simd" and engine.simd_level() < 2:
        sys.exit("ab_switch: simd needs a CPU with AVX-512F (simd_level() is %d)" % engine.simd_level())
    mode = "training" if args.train else "forward"
    cases.apply_threads(args.threads)
    problem = Problem(args.cell, *args.shape)
    run, _ = ENGINES[args.engine].prepare(problem, cases.problem_data(problem), mode)
    switch = SWITCHES[args.switch]
    for on in (True, False):   # warm both sides
        switch(on)
        run()
        run()
    t0 = time.perf_counter()
    run()
    calls = max(2, int(0.4 / (time.perf_counter() - t0)))
    medians = {True: [], False: []}
    try:
        for _ in range(args.rounds):
            for on in (True, False):
                switch(on)
                times = []
                for _ in range(calls):
                    t0 = time.perf_counter()
                    run()
                    times.append(time.perf_counter() - t0)
                medians[on].append(statistics.median(times))
    finally:
        switch(True)
    on, off = statistics.median(medians[True]), statistics.median(medians[False])
    print(f"{problem.id} {mode} threads={args.threads} {args.switch}: on {1e3 * on:.3f} ms, "
          f"off {1e3 * off:.3f} ms, on/off {on / off:.3f}  ({args.rounds} rounds of {calls} calls)")


if __name__ == "__main__":
    main()
