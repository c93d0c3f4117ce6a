"""Build of the optional native hot loops; the metadata stays in setup.cfg.

Each per-datagram loop that Python cannot run fast enough is one small C
extension against the CPython API, a leaf that takes buffers and returns
counts (issue 13): ``sfu.forward._fanout`` (the SFU's per-copy rewrite, SRTP
protect and sendmmsg) and ``turn._relay`` (the TURN relay's ChannelData and
Data indications over UDP, with recvmmsg and UDP GSO). They are
``optional``: if a compiler or the Python headers are missing, ``pip
install`` still succeeds and the pure-Python paths run (as they do with
``WADUD_NATIVE=0``). libsrtp is not linked here: the
fan-out calls the libsrtp that pylibsrtp bundles, through its cffi binding,
so the sessions pylibsrtp owns are the ones used.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]
_LINK: list[str] = []

# The fuzz runs (fuzz/all.py, `make fuzz`) build a second copy of the
# extensions with AddressSanitizer and UBSan, into a folder of their own, so
# the copy that .venv and production load is never instrumented:
# WADUD_SANITIZE=1 for the sanitizers alone, =fuzzer (with clang) to add
# libFuzzer's coverage counters, so that the fuzzer is guided by the C code's
# branches as well as Python's. UB aborts rather than printing and going on:
# a fuzzer only notices a crash. Python compiles extensions with -fwrapv,
# under which UBSan cannot see a signed overflow; the leaves must not need
# wrapping, so the fuzz build turns it off.
_SANITIZE_MODE = os.environ.get("WADUD_SANITIZE", "")
if _SANITIZE_MODE:
    _SANITIZERS = "address,undefined" + (",fuzzer-no-link" if _SANITIZE_MODE == "fuzzer" else "")
    _SANITIZE = [f"-fsanitize={_SANITIZERS}", "-fno-sanitize-recover=all"]
    _FLAGS = [*_FLAGS[1:], "-O1", "-g", "-fno-omit-frame-pointer", "-fno-wrapv", *_SANITIZE]
    _LINK = _SANITIZE

setup(
    ext_modules=[
        Extension(
            "sfu.forward._fanout",
            [
                "sfu/forward/_fanout.c",
                "sfu/forward/_fanout_red.c",
                "sfu/forward/_unprotect.c",
                "sfu/forward/_view.c",
                "sfu/forward/_stamp.c",
            ],
            depends=["sfu/forward/_fanout.h", "sfu/forward/_rings.h", "sfu/forward/_slots.h"],
            optional=True,
            extra_compile_args=_FLAGS,
            extra_link_args=_LINK,
        ),
        Extension(
            "turn._relay",
            ["turn/_relay.c"],
            optional=True,
            extra_compile_args=_FLAGS,
            extra_link_args=_LINK,
        ),
    ]
)
