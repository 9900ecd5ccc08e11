"""The one compiled part: the fast path of the strict CBOR decoder (docs/adr/0006-compiled-cbor-fast-path.md).

Everything else is in pyproject.toml. The extension is optional: without a C compiler the
install goes on and ``suitkit.core.cbor`` uses its reference decoder alone.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension(
    "suitkit.core._strictcbor",
    sources=["src/suitkit/core/_strictcbor.c"],
    optional=True,
    extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wconversion", "-Werror=implicit-function-declaration"],
)])
