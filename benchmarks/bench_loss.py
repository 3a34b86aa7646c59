"""Loss benchmark (see :mod:`fastmask.bench.loss`; also `fastmask bench`).

python benchmarks/bench_loss.py --help
"""

from fastmask.bench.loss import main

raise SystemExit(main())
