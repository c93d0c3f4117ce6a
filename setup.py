"""Build of the optional native hot loops; the metadata stays in setup.cfg.

Each per-datagram loop that Python cannot run fast enough is one small C
extension against the CPython API, a leaf that takes buffers and returns
counts (issue 13): ``sfu._fanout`` (the SFU's per-copy rewrite, SRTP
protect and sendmmsg) and ``turn._relay`` (the TURN relay's ChannelData and
Data indications over UDP, with recvmmsg and UDP GSO). They are
``optional``: if a compiler or the Python headers are missing, ``pip
install`` still succeeds and the pure-Python paths run (as they do with
``WADUD_NATIVE=0``). libsrtp is not linked here: the
fan-out calls the libsrtp that pylibsrtp bundles, through its cffi binding,
so the sessions pylibsrtp owns are the ones used.
"""

from __future__ import annotations

from setuptools import Extension, setup

_FLAGS = ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-Wno-missing-field-initializers"]

setup(
    ext_modules=[
        Extension(
            "sfu._fanout",
            ["sfu/_fanout.c", "sfu/_fanout_red.c"],
            depends=["sfu/_fanout.h"],
            optional=True,
            extra_compile_args=_FLAGS,
        ),
        Extension("turn._relay", ["turn/_relay.c"], optional=True, extra_compile_args=_FLAGS),
    ]
)
