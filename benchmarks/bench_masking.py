"""Masking-op benchmark (see :mod:`fastmask.bench.masking`); a full run writes results/masking_cpu.md.

python benchmarks/bench_masking.py [--quick] [--lengths L ...] [--json PATH] [--markdown PATH]
"""

import os

from fastmask.bench.masking import main

raise SystemExit(
    main(default_markdown=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "masking_cpu.md"))
)
