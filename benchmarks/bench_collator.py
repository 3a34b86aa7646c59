"""Whole-collator benchmark (see :mod:`fastmask.bench.collator`; also `fastmask bench`).

python benchmarks/bench_collator.py --help
"""

from fastmask.bench.collator import main

raise SystemExit(main())
