"""The house keeps its layers: imports run down only (import-linter), no module over 400 lines,
the design card's root modules, typed dependencies, and imports without side effects."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
from lint_layers import lint, mirror, roots  # noqa: E402

CARD_ROOT_MODULES = {"main", "config", "signaling", "ai_stream", "model"}
NOT_PRODUCT = {"tests", "bench", "scripts", "examples", ".venv", "node_modules", ".git"}


def product_files() -> list[Path]:
    return [p for p in ROOT.rglob("*.py") if not NOT_PRODUCT & set(p.relative_to(ROOT).parts)]


def test_every_import_runs_down_the_layers():
    result = lint()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_an_import_back_up_the_layers_breaks_the_contract(tmp_path):
    tree = tmp_path / "tree"
    tree.mkdir()
    mirror(tree)
    with open(tree / "core" / "slots.py", "a") as f:
        f.write("\nimport hub  # a bottom-layer module reaching up\n")
    result = lint(source=tree, config=tree / ".importlinter")
    assert result.returncode != 0
    assert "core.slots -> hub" in result.stdout and "BROKEN" in result.stdout


def test_the_contract_covers_every_product_module():
    top = {p.relative_to(ROOT).parts[0].removesuffix(".py") for p in product_files()}
    assert top == set(roots()), "a module or package outside the layers contract"


def test_no_module_is_longer_than_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in product_files()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}


def test_the_root_keeps_the_design_cards_modules_plus_at_most_one():
    root_modules = {p.stem for p in ROOT.glob("*.py")}
    assert CARD_ROOT_MODULES <= root_modules
    assert len(root_modules - CARD_ROOT_MODULES) <= 1, root_modules - CARD_ROOT_MODULES


def test_routes_read_services_through_typed_dependencies_only():
    """`app.state` is touched where the app is built (main) and by the dependency getters alone."""
    readers = sorted(str(p.relative_to(ROOT)) for p in product_files() if "app.state" in p.read_text())
    assert readers == ["api/deps.py", "main.py"]
    main_tree = ast.parse((ROOT / "main.py").read_text())
    assert not [n for n in ast.walk(main_tree) if isinstance(n, ast.Attribute) and n.attr == "state"
                and isinstance(n.value, ast.Attribute) and n.value.attr == "app"], "main's routes use app.state"


def test_importing_every_module_has_no_side_effects(tmp_path):
    """Imports define things and nothing else: no settings read (a broken .env in the working
    folder must not matter), no app built, no thread, no library patched."""
    (tmp_path / ".env").write_text("TARGET_FPS=not-a-number\nDEFAULT_MODEL=nonexistent\n")
    modules = sorted({".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
                      for p in product_files()})
    script = f"""
import threading, aioice.ice
before_lookup = aioice.ice.get_host_addresses
threads = set(threading.enumerate())
import importlib
for name in {modules!r}:
    importlib.import_module(name)
import main
assert "app" not in vars(main), "main built its app on import"
assert set(threading.enumerate()) == threads, "an import started a thread"
assert aioice.ice.get_host_addresses is before_lookup, "an import patched aioice"
import config
assert config.get_settings.cache_info().currsize == 0, "an import read the settings"
print("ok", len({modules!r}))
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr


def test_main_app_is_built_on_first_access(monkeypatch):
    import main

    monkeypatch.delitem(vars(main), "app", raising=False)
    monkeypatch.setenv("DEFAULT_MODEL", "none")
    main.get_settings.cache_clear()
    try:
        app = main.app
        assert app is main.app, "built once, then kept"
        assert app.state.services.settings.DEFAULT_MODEL == "none"
    finally:
        vars(main).pop("app", None)
        main.get_settings.cache_clear()


def test_uvicorn_runs_the_factory():
    import httpx

    from conftest import free_port

    port = free_port()
    env = {**os.environ, "STUN_SERVERS": "[]", "DEFAULT_MODEL": "none", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "main:create_app", "--factory", "--host", "127.0.0.1",
                             "--port", str(port)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        import time

        deadline = time.monotonic() + 60
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.communicate(timeout=10)[0]
                time.sleep(0.2)
        assert r.status_code == 200 and r.json()["status"] == "healthy"
    finally:
        proc.terminate()
        proc.wait(30)
