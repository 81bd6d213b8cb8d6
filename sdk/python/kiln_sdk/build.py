"""Build a Python Kiln plugin into a WebAssembly component.

    python -m kiln_sdk.build --world aggregate --app app --path . --out my_plugin.wasm \\
        [--wit <kiln>/wit]

Run it with a Python that has componentize-py (the SDK's ``build`` extra,
``pip install -e '<kiln>/sdk/python[build]'``, or the pinned
``sdk/python/requirements.txt``): componentize-py is run from that same
interpreter. The component is built with ``--stub-wasi`` (it imports only the
world's ``kiln:plugin`` interfaces, no WASI) and with bindings generated from
``--wit`` at build time; ``--wit`` defaults to the ``wit/`` of the Kiln
checkout this SDK sits in.

What it does:

1. Copies the ``*.py`` files of each ``--path`` directory (tests,
   ``conftest.py`` and ``__pycache__`` left out) and the SDK package
   ``kiln_sdk`` into a staging directory, so that componentize-py, which
   writes ``__pycache__`` next to the sources it imports, never writes into
   the source tree.
2. Hashes the inputs (the staged files, the WIT files, the world, the app
   module, this script and componentize-py's version). When ``--out``
   exists and its stamp (``<out>.stamp``) holds the same hash, it stops:
   componentize-py's output is not byte-reproducible, so rebuilding
   unchanged inputs would give the plugin a new content hash for nothing.
   ``--force`` rebuilds anyway.
3. Runs componentize-py into a temporary file next to ``--out`` and renames
   it over ``--out`` (atomic: a watcher never sees half a file), then writes
   the stamp.

Messages go to stderr (stdout stays free for a caller such as a Cargo build
script); the exit status is 0 on success (built or up to date), 1 on a
failed build, 2 on bad arguments.
"""

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, List, Sequence, Tuple

# The directory holding the ``kiln_sdk`` package (sdk/python in a checkout).
SDK_DIR = Path(__file__).resolve().parent.parent
# The Kiln checkout's WIT, the default of --wit.
DEFAULT_WIT = SDK_DIR.parent.parent / "wit"
SDK_PACKAGE = "kiln_sdk"
# Module names the generated bindings take; an app module must not shadow them.
RESERVED_MODULES = {"wit_world", "componentize_py_types", "componentize_py_runtime", "poll_loop"}

# Runs componentize-py's command line from this interpreter (the package has
# no `__main__`; its console script does exactly this).
LAUNCHER = (
    "import sys, componentize_py; sys.argv[0] = 'componentize-py'; sys.exit(componentize_py.script())"
)


class BuildError(Exception):
    """A failure to report in one line, without a traceback."""


def log(message: str) -> None:
    print(f"kiln build: {message}", file=sys.stderr, flush=True)


def is_test_file(relative: Path) -> bool:
    name = relative.name
    return (
        name == "conftest.py"
        or name.startswith("test_")
        or name.endswith("_test.py")
        or "tests" in relative.parts[:-1]
        or "__pycache__" in relative.parts
    )


def python_sources(root: Path) -> List[Path]:
    """The ``*.py`` files under ``root`` that go into a component, relative
    to it, sorted."""
    return sorted(
        path.relative_to(root)
        for path in root.rglob("*.py")
        if path.is_file() and not is_test_file(path.relative_to(root))
    )


def stage(paths: Sequence[Path], into: Path) -> List[Tuple[Path, List[Path]]]:
    """Copy the sources of each ``--path`` directory and the SDK package into
    ``into``; returns the staged directories in search order (the app's
    first, the SDK last) with their files."""
    staged = []
    for index, source in enumerate([*paths, SDK_DIR]):
        target = into / f"{index}-{source.name}"
        if source == SDK_DIR:
            files = [
                Path(SDK_PACKAGE) / f
                for f in python_sources(SDK_DIR / SDK_PACKAGE)
                if f != Path("build.py")
            ]
        else:
            files = python_sources(source)
        for relative in files:
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / relative, target / relative)
        target.mkdir(parents=True, exist_ok=True)
        staged.append((target, files))
    return staged


def wit_files(wit: Path) -> List[Path]:
    return sorted(p for p in (wit.rglob("*.wit") if wit.is_dir() else [wit]) if p.is_file())


def componentize_py_version() -> str:
    try:
        from importlib.metadata import version

        return version("componentize-py")
    except Exception as error:  # PackageNotFoundError, or a broken install
        raise BuildError(
            f"componentize-py is not installed for {sys.executable} ({error}); run "
            f"`{sys.executable} -m pip install -e '{SDK_DIR}[build]'`"
        ) from None


def inputs_hash(args: argparse.Namespace, staged: Iterable[Tuple[Path, List[Path]]], version: str) -> str:
    digest = hashlib.sha256()

    def add(label: str, data: bytes) -> None:
        digest.update(f"{label}\0{len(data)}\0".encode())
        digest.update(data)

    add("componentize-py", version.encode())
    add("build.py", Path(__file__).read_bytes())
    add("world", args.world.encode())
    add("app", args.app.encode())
    for path in wit_files(args.wit):
        add(f"wit:{path.relative_to(args.wit) if args.wit.is_dir() else path.name}", path.read_bytes())
    for index, (directory, files) in enumerate(staged):
        for relative in files:
            add(f"src:{index}:{relative.as_posix()}", (directory / relative).read_bytes())
    return digest.hexdigest()


def check_arguments(args: argparse.Namespace) -> None:
    if not args.wit.exists():
        raise BuildError(f"--wit {args.wit}: no such file or directory")
    if not wit_files(args.wit):
        raise BuildError(f"--wit {args.wit}: no .wit file")
    for path in args.path:
        if not path.is_dir():
            raise BuildError(f"--path {path}: not a directory")
    module = args.app
    if not module.isidentifier():
        raise BuildError(f"--app {module!r}: not a Python module name")
    if module in RESERVED_MODULES or module == args.world or module == SDK_PACKAGE:
        raise BuildError(
            f"--app {module!r}: the name is taken by the generated bindings or the SDK; "
            "rename the entry module"
        )
    if not any((p / f"{module}.py").is_file() or (p / module / "__init__.py").is_file() for p in args.path):
        raise BuildError(f"--app {module!r}: no {module}.py (or {module}/__init__.py) in any --path")


def build(args: argparse.Namespace) -> None:
    check_arguments(args)
    version = componentize_py_version()
    out: Path = args.out
    stamp = out.with_name(out.name + ".stamp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kiln-py-build-") as staging:
        staged = stage(args.path, Path(staging))
        digest = inputs_hash(args, staged, version)
        if not args.force and out.is_file() and stamp.is_file() and stamp.read_text().strip() == digest:
            log(f"{out} is up to date")
            return
        partial = out.with_name(f".{out.name}.{os.getpid()}.partial")
        command = [
            sys.executable,
            "-c",
            LAUNCHER,
            "--wit-path",
            str(args.wit),
            "--world",
            args.world,
            "--quiet",
            "componentize",
            "--stub-wasi",
            "--output",
            str(partial),
        ]
        for directory, _ in staged:
            command += ["--python-path", str(directory)]
        command.append(args.app)
        started = time.monotonic()
        try:
            # No Rust backtrace in componentize-py's errors (a Cargo build may
            # set RUST_BACKTRACE): the Python traceback is what matters.
            env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
            result = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
            )
            if result.returncode != 0 or not partial.is_file() or partial.stat().st_size == 0:
                output = result.stdout.strip() or "(no output)"
                raise BuildError(
                    f"componentize-py failed (exit status {result.returncode}) building {args.app} "
                    f"for world {args.world}:\n{output}"
                )
            os.replace(partial, out)
        finally:
            partial.unlink(missing_ok=True)
        # The stamp is written last: a build cut short leaves no stamp, so the
        # next run builds again.
        stamp_partial = stamp.with_name(f".{stamp.name}.{os.getpid()}.partial")
        stamp_partial.write_text(digest + "\n")
        os.replace(stamp_partial, stamp)
    size_mib = out.stat().st_size / (1024 * 1024)
    log(f"built {out} ({size_mib:.1f} MiB) in {time.monotonic() - started:.1f} s")


def parse_arguments(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m kiln_sdk.build",
        description="Build a Python Kiln plugin into a WebAssembly component with componentize-py.",
    )
    parser.add_argument(
        "--wit",
        type=Path,
        default=DEFAULT_WIT if DEFAULT_WIT.is_dir() else None,
        required=not DEFAULT_WIT.is_dir(),
        help=f"the WIT directory (default: {DEFAULT_WIT})",
    )
    parser.add_argument(
        "--world", required=True, help="the world to target: aggregate, projection or saga"
    )
    parser.add_argument(
        "--app", required=True, help="the entry module that defines WitWorld (e.g. app)"
    )
    parser.add_argument(
        "--path",
        type=Path,
        action="append",
        required=True,
        help="a directory with the app's modules; may be repeated (searched in order)",
    )
    parser.add_argument("--out", type=Path, required=True, help="the component file to write")
    parser.add_argument(
        "--force", action="store_true", help="build even when the inputs match the stamp"
    )
    args = parser.parse_args(argv)
    args.wit = args.wit.resolve()
    args.path = [p.resolve() for p in args.path]
    args.out = args.out.resolve()
    return args


def main(argv: Sequence[str]) -> int:
    args = parse_arguments(argv)
    try:
        build(args)
    except BuildError as error:
        log(f"error: {error}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
