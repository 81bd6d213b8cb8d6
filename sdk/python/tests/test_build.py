"""build.py without running componentize-py: arguments, staging, the stamp."""

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

BUILD_PY = Path(__file__).resolve().parents[1] / "kiln_sdk" / "build.py"
WIT = Path(__file__).resolve().parents[3] / "wit"


def load_build() -> ModuleType:
    spec = importlib.util.spec_from_file_location("kiln_build_under_test", BUILD_PY)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build = load_build()


def app_dir(tmp_path: Path) -> Path:
    app = tmp_path / "plugin"
    (app / "pkg").mkdir(parents=True)
    (app / "app.py").write_text("WitWorld = None\n")
    (app / "logic.py").write_text("X = 1\n")
    (app / "pkg" / "__init__.py").write_text("")
    (app / "test_logic.py").write_text("def test(): pass\n")
    (app / "conftest.py").write_text("")
    (app / "tests").mkdir()
    (app / "tests" / "helper.py").write_text("")
    (app / "__pycache__").mkdir()
    (app / "__pycache__" / "x.py").write_text("")
    (app / "notes.txt").write_text("not python")
    return app


def args(tmp_path: Path, *extra: str) -> list:
    return [
        "--wit", str(WIT), "--world", "aggregate", "--app", "app",
        "--path", str(app_dir(tmp_path)), "--out", str(tmp_path / "out" / "p.wasm"), *extra,
    ]


def test_only_sources_are_staged(tmp_path: Path) -> None:
    app = app_dir(tmp_path)
    assert [p.as_posix() for p in build.python_sources(app)] == ["app.py", "logic.py", "pkg/__init__.py"]
    staged = build.stage([app], tmp_path / "stage")
    (app_stage, _), (sdk_stage, sdk_files) = staged
    staged_names = sorted(p.name for p in app_stage.rglob("*") if p.is_file())
    assert staged_names == ["__init__.py", "app.py", "logic.py"]
    assert Path("kiln_sdk/component.py") in sdk_files
    assert (sdk_stage / "kiln_sdk" / "__init__.py").is_file()
    assert not any(part == "tests" for f in sdk_files for part in f.parts)


@pytest.mark.parametrize(
    "change, message",
    [
        (["--app", "wit_world"], "taken by the generated bindings"),
        (["--app", "aggregate"], "taken by the generated bindings"),
        (["--app", "kiln_sdk"], "taken by the generated bindings"),
        (["--app", "not-a-module"], "not a Python module name"),
        (["--app", "missing"], "no missing.py"),
        (["--wit", "/nonexistent"], "no such file or directory"),
    ],
)
def test_bad_arguments_are_reported_in_one_line(tmp_path: Path, change: list, message: str) -> None:
    parsed = build.parse_arguments(args(tmp_path) + change)
    with pytest.raises(build.BuildError, match=message):
        build.build(parsed)


def test_a_missing_path_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert build.main(args(tmp_path) + ["--path", str(tmp_path / "nope")]) == 1
    assert "--path" in capsys.readouterr().err


def test_unchanged_inputs_are_not_rebuilt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    parsed = build.parse_arguments(args(tmp_path))
    # The hash the build would stamp, computed the way build() does.
    staged = build.stage(parsed.path, tmp_path / "stage")
    digest = build.inputs_hash(parsed, staged, build.componentize_py_version())
    parsed.out.parent.mkdir(parents=True)
    parsed.out.write_bytes(b"component")
    parsed.out.with_name("p.wasm.stamp").write_text(digest + "\n")
    build.build(parsed)
    assert "is up to date" in capsys.readouterr().err
    assert parsed.out.read_bytes() == b"component"
    # Any change of an input changes the hash; tests and notes do not count.
    def restaged(name: str) -> str:
        return build.inputs_hash(parsed, build.stage(parsed.path, tmp_path / name), "0.25.1")

    first = build.inputs_hash(parsed, staged, "0.25.1")
    (tmp_path / "plugin" / "test_logic.py").write_text("changed\n")
    (tmp_path / "plugin" / "notes.txt").write_text("changed\n")
    assert restaged("s2") == first
    (tmp_path / "plugin" / "logic.py").write_text("X = 2\n")
    assert restaged("s3") != first
    before = build.inputs_hash(parsed, staged, "0.25.1")
    parsed.world = "projection"
    assert build.inputs_hash(parsed, staged, "0.25.1") != before
    assert build.inputs_hash(parsed, staged, "0.25.2") != build.inputs_hash(parsed, staged, "0.25.1")
