"""Training-step benchmark (see :mod:`fastmask.bench.train_step`; also `fastmask bench`).

python benchmarks/bench_train_step.py --help
"""

from fastmask.bench.train_step import main

raise SystemExit(main())
