"""Floors that only look down (STYLE.md, "Structure: floors that only look down").

``wadud/`` is plumbing every feature stands on; a feature registers itself
with the roles' assembly (``bin/assembly.py``) instead of being named here.
Above the ground each floor imports only floors below it, no modules import
each other round a cycle, and none reaches into another's ``_private`` names.
Every import counts, at module level or inside a function, under
``TYPE_CHECKING`` or through ``importlib``: the check reads the source, it
does not import it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.syntax import parse_files, parse_source

GROUND = Path(__file__).resolve().parents[2] / "wadud"
ABOVE = frozenset(
    {
        "booking",
        "chat",
        "hooks",
        "notify",
        "privacy",
        "recording",
        "rtc",
        "sfu",
        "signalling",
        "sip",
        "turn",
        "bin",
        "wadud_client",
    }
)


def imported(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) of every absolute import anywhere in ``tree``."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def upward(tree: ast.AST) -> list[tuple[int, str]]:
    return [(line, name) for line, name in imported(tree) if name.split(".")[0] in ABOVE]


def found_in(
    files: list[Path], find: Callable[[ast.AST], list[tuple[int, str]]]
) -> list[tuple[Path, int, str]]:
    """What ``find`` finds in the tree of each of ``files``: the file's path
    from the repository's root, the line, and what it found there."""
    return [
        (path.relative_to(GROUND.parent), line, what)
        for path, tree in zip(files, parse_files(files), strict=True)
        for line, what in find(tree)
    ]


def test_the_ground_imports_no_feature_and_no_assembly() -> None:
    files = sorted(GROUND.rglob("*.py"))
    assert len(files) > 10, "the ground's modules were not found"
    offences = [f"{path}:{line} imports {name}" for path, line, name in found_in(files, upward)]
    assert offences == []


@pytest.mark.parametrize(
    "source",
    [
        "import sfu.control",
        "from turn.config import TurnConfig",
        "def f():\n    import booking.http\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from sfu.control import X\n",
        "import importlib\nimportlib.import_module('signalling.http')\n",
        "class A:\n    def m(self):\n        from bin import assembly\n",
        "import rtc as r, chat",
    ],
)
def test_the_check_sees_every_kind_of_import(source: str) -> None:
    assert upward(parse_source(source))


@pytest.mark.parametrize(
    "source",
    ["from wadud import keys", "from . import keys", "import sfuzzy", "import turnstile.x"],
)
def test_the_check_leaves_the_ground_and_lookalikes_alone(source: str) -> None:
    assert upward(parse_source(source)) == []


#: Features that stand beside or below others: the packages each must not
#: import, and the modules of those it may import all the same.
FEATURE_RULES = {
    # privacy/ stands below booking, chat and signalling: they import it, never
    # the other way (export and erasure reach features through providers the
    # assembly registers).
    "privacy": (frozenset({"booking", "chat", "sfu", "signalling", "turn", "bin"}), frozenset()),
    # notify/ stands beside booking and chat: it reads their events as plain
    # data (and a few of their tables in SQL), never their code.
    "notify": (frozenset({"booking", "chat", "sfu", "signalling", "turn", "bin"}), frozenset()),
    # hooks/ stands beside notify: room events reach it as outbox rows;
    # signalling imports it (to write them), never the other way. Of turn/ it
    # uses only the pure peer rules (turn.policy), which its endpoints share.
    "hooks": (
        frozenset({"booking", "chat", "notify", "sfu", "signalling", "turn", "bin"}),
        frozenset({"turn.policy"}),
    ),
}


@pytest.mark.parametrize("package", sorted(FEATURE_RULES))
def test_a_feature_imports_no_feature_beside_or_above_it(package: str) -> None:
    forbidden, allowed = FEATURE_RULES[package]
    files = sorted((GROUND.parent / package).rglob("*.py"))
    assert files, f"{package}/ was not found"
    offences = [
        f"{path}:{line} imports {name}"
        for path, line, name in found_in(files, imported)
        if name.split(".")[0] in forbidden and name not in allowed
    ]
    assert offences == []


# --- Every floor, every cycle, every private name ------------------------------
#
# The checks below read all of our modules at once. A module is named by its
# path (``sfu/node/worker.py`` is ``sfu.node.worker``, ``sfu/__init__.py`` is ``sfu``);
# ``from sfu import node`` counts as importing ``sfu`` and ``sfu.node``.

ROOT = GROUND.parent
#: The server's packages (each imports with no extra installed:
#: tests/test_install.py), and ours with the client beside them.
SERVER = (
    "wadud",
    "bin",
    "booking",
    "turn",
    "chat",
    "rtc",
    "sfu",
    "signalling",
    "privacy",
    "notify",
    "hooks",
    "recording",
    "sip",
)
OURS = (*SERVER, "wadud_client")


def module_name(path: Path) -> str:
    """``booking/payments/gateways/card.py`` -> ``booking.payments.gateways.card``;
    a package is its folder."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from ... import`` names, with a relative one resolved
    against ``module`` (the importing module) as Python resolves it."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def names_imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every dotted name ``tree`` imports: what :func:`imported` finds, relative
    imports resolved, and ``package.name`` for each ``from package import name``
    (which is a module when ``name`` is a submodule)."""
    found = {name for _, name in imported(tree)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = absolute(node, module, is_package)
            found.add(source)
            found.update(f"{source}.{alias.name}" for alias in node.names)
    return found


class Modules:
    """Our modules, parsed once: module name -> tree, and who imports whom."""

    def __init__(self) -> None:
        files = sorted(path for package in OURS for path in (ROOT / package).rglob("*.py"))
        trees = parse_files(files)
        self.files = {module_name(path): path for path in files}
        self.trees = {module_name(path): tree for path, tree in zip(files, trees, strict=True)}
        self.imports = {
            name: {
                other
                for other in names_imported(tree, name, self.files[name].name == "__init__.py")
                if other in self.files and other != name
            }
            for name, tree in self.trees.items()
        }


@pytest.fixture(scope="module")
def modules() -> Modules:
    found = Modules()
    assert {name.split(".")[0] for name in found.files} == set(OURS), "a package was not found"
    return found


# Each rule: the packages whose modules it covers, and the packages they must
# not import. Third-party imports are never looked at.
FLOOR_RULES = {
    "rtc imports only wadud and rtc": (("rtc",), set(OURS) - {"wadud", "rtc"}),
    "features import nothing of signalling or the assembly": (
        ("sfu", "turn", "chat", "booking", "privacy", "notify", "hooks", "recording", "sip"),
        {"signalling", "bin"},
    ),
    "signalling imports nothing of the assembly": (("signalling",), {"bin"}),
    "the server never imports the client": (
        tuple(p for p in OURS if p != "wadud_client"),
        {"wadud_client"},
    ),
}


#: The one import across a floor that is not a dependency: the ``wadud``
#: command hands ``wadud load`` to the load tester's own command line, lazily,
#: so no server role ever loads the client (which needs aiortc and PyAV).
COMMAND_DISPATCH = {("bin.main", "wadud_client.load.cli")}
#: The other: the phone bridge's seat in a room is a participant like any
#: other, so it is the project's own client (lazily: only the ``sip`` extra
#: brings aiortc and PyAV).
BRIDGE_SEAT = {("sip.node.seat", "wadud_client.call")}


@pytest.mark.parametrize("rule", sorted(FLOOR_RULES))
def test_every_floor_looks_only_down(modules: Modules, rule: str) -> None:
    packages, forbidden = FLOOR_RULES[rule]
    offences = sorted(
        (name, other)
        for name, others in modules.imports.items()
        if name.split(".")[0] in packages
        for other in others
        if other.split(".")[0] in forbidden and (name, other) not in COMMAND_DISPATCH | BRIDGE_SEAT
    )
    assert offences == []


def test_booking_never_imports_payments(modules: Modules) -> None:
    """Inside booking/, the bookings code (its core and its API) stands below
    payments: a cancellation's refunder is handed in by the app's assembly
    (``booking.api.bookings.REFUNDER``), never imported."""
    offences = sorted(
        (name, other)
        for name, others in modules.imports.items()
        if name.split(".")[0] == "booking" and not name.startswith("booking.payments")
        for other in others
        if other.startswith("booking.payments")
    )
    assert offences == []


#: Inside a package cut into concept folders, the folders' own floors, lowest
#: first: a module imports only its own folder and folders on lower floors, so
#: ``sfu.forward`` never imports ``sfu.node``. Folders on one floor stand
#: beside each other and import neither.
SUB_FLOORS = {
    "sfu": (
        ("errors",),
        ("control", "forward", "feedback"),
        ("transport",),
        ("rooms",),
        ("layers",),
        ("negotiation", "recording"),
        ("node",),
    ),
    "wadud": (
        ("errors", "principal", "certs", "signing", "totp", "migrations", "origins", "clocks"),
        ("jsonin",),
        ("frames",),
        ("config",),
        ("observe",),
        ("messaging",),
        ("state",),
        ("web",),
    ),
    "booking": (
        ("clinics", "errors", "privacy"),
        ("lifecycle",),
        ("calls", "refunds", "schedule"),
        ("bookings", "doctors"),
        ("call_reports", "pages", "phone_calls"),
        ("api",),
        ("http", "payments"),
    ),
    "booking.payments": (
        ("errors", "paging", "reach"),
        ("intent",),
        ("gateway", "ledger"),
        ("gateways", "keys", "rows"),
        ("postings",),
        ("payouts", "refunds"),
        ("checkout",),
        ("easypaisa", "transfers"),
        ("http",),
    ),
    "sip": (
        ("errors", "formats"),
        ("wire", "audio"),
        ("calls", "transport"),
        ("node",),
        ("role",),
    ),
    "signalling": (
        ("errors",),
        ("protocol", "keepalive"),
        ("contract",),
        ("room",),
        ("media", "invites"),
        ("live",),
        ("cluster",),
        ("service",),
        ("edge",),
    ),
}


def floor_of(module: str, package: str) -> int | None:
    """The floor of ``module``'s concept folder (or top-level module) inside
    ``package``, a dotted name (``None`` outside it, and for its face)."""
    parts = module.split(".")
    depth = package.count(".") + 1
    if parts[:depth] != package.split(".") or len(parts) <= depth:
        return None
    for floor, folders in enumerate(SUB_FLOORS[package]):
        if parts[depth] in folders:
            return floor
    raise AssertionError(f"{module} is in no floor of {package}: add its folder to SUB_FLOORS")


def entry_of(module: str, package: str) -> str:
    """The folder or top-level module of ``package`` that holds ``module``."""
    return module.split(".")[package.count(".") + 1]


def sub_floor_offences(imports: dict[str, set[str]], package: str) -> list[tuple[str, str]]:
    """(importer, imported) for each import inside ``package`` from one of its
    folders to a folder on the same floor or a higher one."""
    return sorted(
        (name, other)
        for name, others in imports.items()
        if (floor := floor_of(name, package)) is not None
        for other in others
        if (below := floor_of(other, package)) is not None
        and entry_of(other, package) != entry_of(name, package)
        and below >= floor
    )


@pytest.mark.parametrize("package", sorted(SUB_FLOORS))
def test_concept_folders_look_only_down(modules: Modules, package: str) -> None:
    assert sub_floor_offences(modules.imports, package) == []
    faces = [name for name in modules.files if name == package]
    assert all(
        floor_of(other, package) is None for face in faces for other in modules.imports[face]
    ), "a package's face hands nothing on"


@pytest.mark.parametrize(
    ("package", "imports", "offences"),
    [
        ("sfu", {"sfu.node.worker": {"sfu.forward.forwarder"}}, []),
        ("sfu", {"sfu.forward.forwarder": {"sfu.forward.table"}}, []),
        (
            "sfu",
            {"sfu.forward.forwarder": {"sfu.node.worker"}},
            [("sfu.forward.forwarder", "sfu.node.worker")],
        ),
        (
            "sfu",
            {"sfu.forward.forwarder": {"sfu.feedback.reports"}},
            [("sfu.forward.forwarder", "sfu.feedback.reports")],
        ),
        (
            "booking.payments",
            {"booking.payments.intent": {"booking.payments.checkout.service"}},
            [("booking.payments.intent", "booking.payments.checkout.service")],
        ),
    ],
    ids=["down", "within", "up", "aside", "nested package"],
)
def test_the_sub_floor_check_finds_imports_that_look_up_or_aside(
    package: str, imports: dict[str, set[str]], offences: list[tuple[str, str]]
) -> None:
    assert sub_floor_offences(imports, package) == offences


def test_the_sub_floor_check_knows_every_folder(modules: Modules) -> None:
    for package in SUB_FLOORS:
        for name in modules.files:
            floor_of(name, package)


#: A handler parses, authorizes, calls one service method and renders; the
#: SQL and the state it changes live in the service and its store. These are
#: the handler modules: every folder's ``http.py`` and ``http_*.py``, its
#: ``pages.py`` or ``page.py``, and booking's ``api/``.
HANDLED = ("booking", "chat")
SQL = re.compile(r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|UPDATE\s+\w+\s+SET|DELETE\s+FROM)\b", re.S)


def handler_modules() -> list[Path]:
    found = [
        path
        for package in HANDLED
        for path in sorted((ROOT / package).rglob("*.py"))
        if path.name in ("http.py", "pages.py", "page.py", "socket.py")
        or path.name.startswith("http_")
        or path.parent.name == "api"
    ]
    assert ROOT / "booking" / "api" / "doctors.py" in found, "booking's handlers were not found"
    return found


def sql_in(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of each string constant that reads as SQL, and of each
    import of asyncpg."""
    found = [(line, name) for line, name in imported(tree) if name.split(".")[0] == "asyncpg"]
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and SQL.search(node.value)
        ):
            found.append((node.lineno, node.value[:60]))
    return found


def test_handler_modules_hold_no_sql_and_import_no_asyncpg() -> None:
    offences = [
        f"{path}:{line}: {text!r}" for path, line, text in found_in(handler_modules(), sql_in)
    ]
    assert offences == []


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("import asyncpg", 1),
        ("from asyncpg import Pool", 1),
        ('Q = "SELECT id FROM doctors WHERE id = $1"', 1),
        ('Q = """\n    UPDATE bookings SET status = $2\n"""', 1),
        ('T = "Select a time that suits you"', 0),
        ('T = "Update your details"', 0),
    ],
    ids=["import", "from-import", "select", "update", "prose-select", "prose-update"],
)
def test_the_sql_check_finds_sql_but_not_prose(source: str, found: int) -> None:
    assert len(sql_in(parse_source(source))) == found


GATEWAYS = "booking.payments.gateways"
#: What a gateway adapter may import of payments: the pure core it implements.
ADAPTERS_MAY_IMPORT = frozenset(
    {
        "booking",
        "booking.payments",
        "booking.payments.errors",
        "booking.payments.gateway",
        "booking.payments.intent",
        "booking.payments.reach",
    }
)
#: Who may import an adapter besides the adapters: the payments part of the
#: app, which builds the registry, and the pages that play a gateway's part
#: (the sandbox's checkout, EasyPaisa's bridge and simulator) or serve one.
ADAPTER_USERS = frozenset(
    {
        "booking.payments.http",
        "booking.payments.checkout.pages",
        "booking.payments.easypaisa.http",
        "booking.payments.easypaisa.http_simulator",
        "booking.payments.easypaisa.service",
        "bin.main",
    }
)


def test_gateway_adapters_stand_apart(modules: Modules) -> None:
    """The adapters import only the payments core; the service modules know
    a gateway by its interface and are handed the app's registry."""
    adapters = {name for name in modules.files if name.startswith(GATEWAYS)}
    assert {f"{GATEWAYS}.sandbox", f"{GATEWAYS}.registry"} <= adapters
    reaching_up = sorted(
        (name, other)
        for name in adapters
        for other in modules.imports[name]
        if other.split(".")[0] == "booking"
        and other not in adapters
        and other not in ADAPTERS_MAY_IMPORT
    )
    assert reaching_up == []
    users = {
        name
        for name, others in modules.imports.items()
        if name not in adapters and any(other.startswith(GATEWAYS) for other in others)
    }
    assert users <= ADAPTER_USERS


#: What the Python client may import of ours: the wire protocol's pure
#: modules (the frame envelope, the call protocol's messages and their
#: errors), which need only pydantic and the standard library. The client
#: is installed as an extra (``wadud[client]``) beside the server's
#: packages, and reaches the server only over the network.
CLIENT_MAY_IMPORT = frozenset(
    {"wadud.frames", "wadud.errors", "signalling.protocol", "signalling.errors"}
)


def test_the_client_imports_only_the_wire_protocol(modules: Modules) -> None:
    offences = sorted(
        (name, other)
        for name, others in modules.imports.items()
        if name.split(".")[0] == "wadud_client"
        for other in others
        if other.split(".")[0] != "wadud_client"
        and other not in CLIENT_MAY_IMPORT
        # ``from signalling import protocol`` also names ``signalling``.
        and not any(allowed.startswith(other + ".") for allowed in CLIENT_MAY_IMPORT)
    )
    assert offences == []


def strongly_connected(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's
    algorithm, with an explicit stack so a deep chain cannot overflow)."""
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()
    for start in sorted(graph):
        if start in order:
            continue
        work = [(start, iter(sorted(graph[start])))]
        order[start] = low[start] = len(order)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            following = next(successors, None)
            if following is not None:
                if following not in order:
                    order[following] = low[following] = len(order)
                    stack.append(following)
                    on_stack.add(following)
                    work.append((following, iter(sorted(graph[following]))))
                elif following in on_stack:
                    low[node] = min(low[node], order[following])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == order[node]:
                component: set[str] = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.add(frozenset(component))
    return found


#: Import cycles not yet broken. This list must only shrink: breaking a cycle
#: fails the test until its entry goes, and a new cycle fails it at once.
KNOWN_CYCLES: set[frozenset[str]] = set()


def test_no_module_imports_itself_round_a_cycle(modules: Modules) -> None:
    """Every import counts, lazy ones and ``TYPE_CHECKING`` ones too: a cycle
    in the source is a cycle in the design, whenever Python runs it."""
    assert strongly_connected(modules.imports) == KNOWN_CYCLES


@pytest.mark.parametrize(
    ("graph", "cycles"),
    [
        ({"a": {"b"}, "b": set()}, set()),
        ({"a": {"b"}, "b": {"a"}}, {frozenset("ab")}),
        (
            {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": {"d"}},
            {frozenset("abc"), frozenset("de")},
        ),
    ],
)
def test_the_cycle_check_finds_cycles(
    graph: dict[str, set[str]], cycles: set[frozenset[str]]
) -> None:
    assert strongly_connected(graph) == cycles


@pytest.mark.parametrize(
    ("source", "module", "names"),
    [
        ("from sfu import node", "bin.main", {"sfu", "sfu.node"}),
        ("from . import keys", "wadud.api", {"wadud", "wadud.keys"}),
        (
            "from .. import errors",
            "booking.payments.gateways.card",
            {"booking.payments", "booking.payments.errors"},
        ),
        ("def f():\n    import rtc.stun\n", "turn.core", {"rtc.stun"}),
    ],
)
def test_the_cycle_check_sees_submodules_and_relative_imports(
    source: str, module: str, names: set[str]
) -> None:
    assert names_imported(parse_source(source), module, False) == names


def private_names(tree: ast.AST, module: str, is_package: bool) -> set[tuple[str, str]]:
    """(module, name) for each ``from module import _name`` of ours in ``tree``.
    A C extension (``turn/_relay.c``, built as ``turn._relay``) has its leading
    underscore by convention, not because it is private: it is left out."""
    found: set[tuple[str, str]] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        source = absolute(node, module, is_package)
        if source.split(".")[0] not in OURS:
            continue
        for alias in node.names:
            private = alias.name.startswith("_") and not alias.name.startswith("__")
            native = (ROOT / source.replace(".", "/") / f"{alias.name}.c").exists()
            if private and not native:
                found.add((source, alias.name))
    return found


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("from signalling.replicas import _Moved", {("signalling.replicas", "_Moved")}),
        ("def f():\n    from . import _helper\n", {("sfu", "_helper")}),
        ("from turn import _relay\nfrom sfu.forward import _fanout", set()),
        ("from json import _default_decoder\nfrom sfu import __version__", set()),
    ],
)
def test_the_private_check_sees_private_names_but_not_native_leaves(
    source: str, found: set[tuple[str, str]]
) -> None:
    assert private_names(parse_source(source), "sfu.worker", False) == found


#: ``from x import _name`` not yet undone. This list must only shrink: a name
#: made public (or no longer shared) fails the test until its entry goes.
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()


def test_no_module_reaches_into_anothers_private_names(modules: Modules) -> None:
    found = {
        (name, *pair)
        for name, tree in modules.trees.items()
        for pair in private_names(tree, name, modules.files[name].name == "__init__.py")
    }
    assert found == KNOWN_PRIVATE_IMPORTS


#: The longest a server or client module may be: past it, a module holds more
#: than one concept and wants splitting along them, and the next feature has
#: no room. Tests, benchmarks and the native leaves' C sources may run to
#: :data:`MAX_OTHER_LINES`.
MAX_LINES = 700
MAX_OTHER_LINES = 1000
#: Modules over :data:`MAX_LINES` not yet split. This list must only shrink.
KNOWN_LONG: set[str] = set()


def lengths(roots: list[Path], patterns: tuple[str, ...]) -> dict[str, int]:
    return {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for root in roots
        for pattern in patterns
        for path in root.rglob(pattern)
    }


def test_no_source_module_is_over_seven_hundred_lines() -> None:
    found = lengths([ROOT / name for name in OURS], ("*.py",))
    assert {path for path, n in found.items() if n > MAX_LINES} == KNOWN_LONG


def test_no_test_benchmark_or_c_source_is_over_a_thousand_lines() -> None:
    roots = [ROOT / name for name in ("tests", "benchmarks")]
    found = lengths(roots, ("*.py",)) | lengths([ROOT / name for name in OURS], ("*.c", "*.h"))
    long = {path: n for path, n in found.items() if n > MAX_OTHER_LINES}
    assert long == {}, f"over {MAX_OTHER_LINES} lines: {long}"


#: The most modules one folder of ours may hold (``__init__.py`` included):
#: past it, a newcomer reads every opening docstring to find the groups, and
#: the folder wants cutting into concept folders.
MAX_MODULES = 15
#: Folders over :data:`MAX_MODULES` not yet cut. This list must only shrink.
KNOWN_CROWDED: set[str] = set()


def test_no_folder_holds_more_than_fifteen_modules() -> None:
    counts: dict[str, int] = {}
    for name in OURS:
        for path in (ROOT / name).rglob("*.py"):
            folder = str(path.parent.relative_to(ROOT))
            counts[folder] = counts.get(folder, 0) + 1
    assert {folder for folder, n in counts.items() if n > MAX_MODULES} == KNOWN_CROWDED
