"""``pydiffuse bench``: each fused op beside the same expression in PyTorch eager and
``torch.compile``, and against this machine's copy bandwidth measured in the same run.

``harness.py`` times and reports (the timing budgets, the machine, the copy-bandwidth ceiling,
the table, JSON and plot); ``cases.py`` holds what is timed, one entry per op and set of options;
``sweeps.py`` times ops across shapes (``--sweep unet``: ``unet_shapes.py``; ``--sweep
shapes``); ``command.py`` is the command line. Every name is re-exported here, as when this was
one module. Also runnable as ``python -m pydiffuse.bench`` (or ``benchmarks/bench_ops.py``).
"""

from .cases import (ATTN_QUICK_SHAPE, ATTN_SHAPE, CASE_NAMES, CLIP, CO, COEFS, CX, E0, EX,
                    GN_GROUPS, GN_QUICK_SHAPE, GN_SHAPE, GUIDANCE, LINCOMB, M0, ME, MX, S, SNR,
                    STEP_SIZE, Case, make_cases)
from .command import add_arguments, main, run_from_args
from .harness import (COMPILED_BACKENDS, DTYPES, FULL, FULL_SHAPE, LOAD_WARNING, QUICK,
                      QUICK_SHAPE, Budget, OtherLoad, bench_case, format_table, machine_info, plot,
                      run, time_call, write_json)
from .sweeps import SWEEPS, format_sweep, run_sweep

# the private helpers, as the one module had them (benchmarks/*.py use _summary, _short, _inputs)
from .cases import (_attention_flops, _attention_inputs, _backward_runner,  # noqa: F401
                    _cfg_clip_eager, _grad_inputs, _group_norm_eager, _group_norm_fused,
                    _group_norm_inputs, _langevin_eager, _langevin_snr_eager, _lincomb_eager,
                    _step_eager)
from .harness import (_cpu_model, _inputs, _rel_err, _row, _short, _summary,  # noqa: F401
                      _timed_reps)

__all__ = [
    "ATTN_QUICK_SHAPE", "ATTN_SHAPE", "Budget", "CASE_NAMES", "CLIP", "CO", "COEFS",
    "COMPILED_BACKENDS", "CX", "Case", "DTYPES", "E0", "EX", "FULL", "FULL_SHAPE", "GN_GROUPS",
    "GN_QUICK_SHAPE", "GN_SHAPE", "GUIDANCE", "LINCOMB", "LOAD_WARNING", "M0", "ME", "MX",
    "OtherLoad", "QUICK", "QUICK_SHAPE", "S", "SNR", "STEP_SIZE", "SWEEPS", "add_arguments",
    "bench_case", "format_sweep", "format_table", "machine_info", "main", "make_cases", "plot",
    "run", "run_from_args", "run_sweep", "time_call", "write_json",
]
