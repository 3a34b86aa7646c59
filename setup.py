"""Build script for fastmask's optional C++ extension ``fastmask._C``.

Build switches (environment variables):

``FASTMASK_NO_EXT=1``
    Skip the C++ extension. The package still imports and runs on the reference backend
    (and on Triton for CUDA tensors).
``FASTMASK_NATIVE=1``
    Compile with ``-march=native`` (faster on the build machine, not portable).
``FASTMASK_DEBUG=1``
    Compile with ``-O0 -g`` and assertions.
``FASTMASK_BUILD_JOBS=N``
    Compile N sources at once (default: one per CPU).

The extension links only against the C++ standard library and pybind11; it never needs torch
at build time, so ``pip install`` builds it in seconds in an isolated environment.
"""

import os
import sys

from setuptools import setup


def _flag(name):
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


ext_modules = []
cmdclass = {}
if not _flag("FASTMASK_NO_EXT"):
    from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext

    ParallelCompile("FASTMASK_BUILD_JOBS", default=0).install()

    sources = sorted(os.path.join("csrc", name) for name in os.listdir("csrc") if name.endswith(".cpp"))
    extra_compile_args = []
    if sys.platform != "win32":
        if _flag("FASTMASK_DEBUG"):
            extra_compile_args += ["-O0", "-g"]
        else:
            extra_compile_args += ["-O3", "-DNDEBUG", "-fno-math-errno"]
        if _flag("FASTMASK_NATIVE"):
            extra_compile_args += ["-march=native"]
        extra_compile_args += ["-pthread"]
    ext_modules.append(
        Pybind11Extension(
            "fastmask._C",
            sources,
            cxx_std=17,
            extra_compile_args=extra_compile_args,
            extra_link_args=["-pthread"] if sys.platform != "win32" else [],
        )
    )
    cmdclass["build_ext"] = build_ext

setup(ext_modules=ext_modules, cmdclass=cmdclass)
