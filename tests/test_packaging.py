"""The wheel, installed (not editable), migrates and serves from any directory.

The wheel is built from a copy of the checkout (no stale build/ directory, nothing left in the
checkout) without build isolation, so it needs setuptools>=68 and wheel in this environment (the
``test`` extra has them). It is installed into a temporary virtual environment without pip or any
download: a .pth line there points at this environment's site-packages for the dependencies. A path
line does not process the .pth files of that directory, so the project's editable install is not
active there: ``app`` comes from the wheel, and ``billing-mirror migrate`` and ``serve`` run from
a directory of their own with nothing setting PYTHONPATH.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import site
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import httpx
import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, text

from app.db.migrate import alembic_config
from tests.support import free_port, require_postgres, temporary_pg_database

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "invoice_payment.paid.json"
SECRET = "whsec_packaging_test"
INSPECTOR_KEY = "bm_packaging_inspector_key"
# What a wheel is built from: the project files setuptools reads (the rest of the checkout is not
# packaged). Copied with their symlinks, as in the checkout (migrations/alembic.ini is one).
SOURCES = ("pyproject.toml", "README.md", "alembic.ini", "app", "migrations")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "*.db", "*.db-wal", "*.db-shm")

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Installed:
    wheel: Path
    venv: Path

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "billing-mirror"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def _run(
    *args: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env=env, cwd=cwd)
    assert result.returncode == 0, f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


def _build_wheel(workdir: Path) -> Path:
    major = int(version("setuptools").split(".")[0])
    assert major >= 68, f"setuptools {version('setuptools')} < 68: pip install -e '.[test]'"
    source = workdir / "source"
    source.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, symlinks=True, ignore=IGNORED)
        else:
            shutil.copy2(path, source / name, follow_symlinks=False)
    out = workdir / "dist"
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    _run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", out, source)
    (wheel,) = out.glob("billing_mirror-*.whl")
    return wheel


def _clean_env(venv: Path | None = None) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "DATABASE_URL"}
        and not key.startswith(("STRIPE_", "BILLING_MIRROR_"))
    }
    if venv is not None:
        env["VIRTUAL_ENV"] = str(venv)
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    return env


def _install(wheel: Path, venv: Path) -> None:
    _run(sys.executable, "-m", "venv", "--without-pip", venv)
    purelib = _run(
        venv / "bin" / "python",
        "-c",
        "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        env=_clean_env(),
    ).stdout.strip()
    # The dependencies (and pip) of this environment, as plain path lines.
    (Path(purelib) / "_billing_mirror_test_deps.pth").write_text(
        "".join(f"{p}\n" for p in site.getsitepackages())
    )
    # --ignore-installed: this environment's editable billing-mirror is visible through the .pth
    # line, and must be neither "already satisfied" nor uninstalled.
    pip = (venv / "bin" / "python", "-m", "pip", "--disable-pip-version-check")
    _run(
        *pip,
        "install",
        "--no-deps",
        "--no-index",
        "--ignore-installed",
        wheel,
        env=_clean_env(venv),
        cwd=venv,
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    workdir = tmp_path_factory.mktemp("packaging")
    wheel = _build_wheel(workdir)
    venv = workdir / "venv"
    _install(wheel, venv)
    return Installed(wheel, venv)


def _expected_files() -> set[str]:
    """Every module of the checkout, where the wheel puts it, and the migrations' data files."""
    expected = {f"app/{p.relative_to(ROOT / 'app').as_posix()}" for p in (ROOT / "app").rglob("*.py")}
    migrations = ROOT / "migrations"
    expected |= {f"app/migrations/{p.relative_to(migrations).as_posix()}" for p in migrations.rglob("*.py")}
    expected |= {"app/migrations/alembic.ini", "app/migrations/script.py.mako"}
    # The inspector's pages are package data.
    expected |= {
        f"app/{p.relative_to(ROOT / 'app').as_posix()}" for p in (ROOT / "app").rglob("templates/*.html")
    }
    return {name for name in expected if "__pycache__" not in name}


def test_wheel_holds_every_package_and_the_migrations(installed: Installed) -> None:
    with zipfile.ZipFile(installed.wheel) as wheel:
        names = set(wheel.namelist())
        ini = wheel.read("app/migrations/alembic.ini")
    expected = _expected_files()
    packages = {name.rsplit("/", 1)[0] for name in expected if name.endswith(".py")}
    missing_packages = packages - {name.rsplit("/", 1)[0] for name in names}
    assert not missing_packages, f"add to [tool.setuptools] packages: {sorted(missing_packages)}"
    assert not expected - names, f"not in the wheel: {sorted(expected - names)}"
    versions = {n for n in names if n.startswith("app/migrations/versions/") and n.endswith(".py")}
    assert len(versions) >= 2
    # Only the app package and its metadata: no top-level migrations/, tests/ or bench/.
    strays = {n for n in names if not n.startswith(("app/", "billing_mirror-"))}
    assert not strays
    # The file the symlink points at, not the link.
    assert ini == (ROOT / "alembic.ini").read_bytes()


def test_installed_package_is_not_the_checkout(installed: Installed, tmp_path: Path) -> None:
    script = (
        "import app, app.migrations, app.ingest.sqlite_writer, sys;"
        "print(app.__file__); print(app.migrations.__file__); print(app.ingest.sqlite_writer.__file__)"
    )
    result = _run(installed.python, "-c", script, env=_clean_env(installed.venv), cwd=tmp_path)
    for line in result.stdout.split():
        path = Path(line).resolve()
        assert path.is_relative_to(installed.venv.resolve()), path
        assert not path.is_relative_to(ROOT), path


def _signed(body: bytes) -> dict[str, str]:
    """A Stripe-Signature computed here, not by the package under test."""
    timestamp = int(time.time())
    digest = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"Stripe-Signature": f"t={timestamp},v1={digest}", "Content-Type": "application/json"}


def _writer_children(parent: int) -> list[int]:
    """The SQLite writer processes started by ``parent`` (in a session of their own)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == parent and b"app.ingest.sqlite_writer" in cmdline:
            found.append(int(entry.name))
    return found


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """None for SQLite: the commands use their default, billing-mirror.db in the working directory."""
    if request.param == "sqlite":
        yield None
        return
    require_postgres(request.getfixturevalue("pg_problem"))
    with temporary_pg_database("bm_packaging") as url:
        yield url


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="looks for the writer child in /proc")
def test_installed_command_migrates_and_serves(
    installed: Installed, database: str | None, tmp_path: Path
) -> None:
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = _clean_env(installed.venv)
    env["BILLING_MIRROR_API_KEYS"] = INSPECTOR_KEY
    if database is not None:
        env["DATABASE_URL"] = database
    url = database or f"sqlite:///{workdir / 'billing-mirror.db'}"
    head = ScriptDirectory.from_config(alembic_config(url)).get_current_head()

    migrated = _run(installed.command, "migrate", env=env, cwd=workdir)
    assert "to head" in migrated.stdout
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == head
    finally:
        engine.dispose()

    port = free_port()
    log = tmp_path / "serve.log"
    with log.open("wb") as output:
        server = subprocess.Popen(
            [installed.command, "serve", "--port", str(port), "--secret", SECRET],
            env=env,
            cwd=workdir,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert server.poll() is None, f"serve exited ({server.returncode}):\n{log.read_text()}"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"serve did not answer in 30 s:\n{log.read_text()}"
            time.sleep(0.1)

        # The inspector renders from the installed templates (a read API key opens it).
        page = httpx.get(f"http://127.0.0.1:{port}/inspect", auth=("ops", INSPECTOR_KEY), timeout=10)
        assert page.status_code == 200 and "Rows per table" in page.text, page.text

        event = json.loads(FIXTURE.read_text())
        body = json.dumps(event).encode()
        answer = httpx.post(f"http://127.0.0.1:{port}/webhooks/stripe", content=body, headers=_signed(body))
        assert answer.status_code == 200, answer.text
        assert answer.json()["outcome"] == "applied"

        writers = _writer_children(server.pid)
        if database is None:
            assert len(writers) == 1, f"one SQLite writer child expected, found {writers}"
            # The installed environment's interpreter, which imports the installed package.
            command = Path(f"/proc/{writers[0]}/cmdline").read_bytes().split(b"\0")
            assert command[:3] == [bytes(installed.python), b"-m", b"app.ingest.sqlite_writer"]
            assert (workdir / "billing-mirror.db").exists()
        else:
            assert writers == []
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            returncode = server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
            raise
    # uvicorn shuts down on SIGTERM, then raises it again: the exit status is that of the signal.
    assert returncode in (0, -signal.SIGTERM), log.read_text()
    for pid in writers:
        assert not _running(pid), f"the SQLite writer {pid} outlived the server"

    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(
                text("SELECT type, outcome FROM stripe_events WHERE id = :id"), {"id": event["id"]}
            ).one()
    finally:
        engine.dispose()
    assert tuple(row) == ("invoice_payment.paid", "applied")
