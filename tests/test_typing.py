"""The package ships py.typed: its annotations type-check, and the client's public surface has real types.

``mypy --strict`` runs on example code (``tests/typing_cases``): ``ok_usage.py`` pins every method's
return type with ``assert_type``; ``bad_usage.py`` holds mistakes (a missing ``await``, a wrong
argument type, a stream used as a result) that must each be reported.
"""

import inspect
import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

from llamatelemetry import AsyncLlamaCppClient, LlamaCppClient, _calls, _resources

ROOT = Path(__file__).resolve().parent.parent
CASES = Path(__file__).resolve().parent / "typing_cases"


#: One fresh cache per test run: a cache left by an earlier checkout can hide errors in changed code.
_CACHE_DIR: Path | None = None


def _mypy(*args: str) -> subprocess.CompletedProcess[str]:
    global _CACHE_DIR
    if _CACHE_DIR is None:
        import atexit
        import shutil
        import tempfile

        _CACHE_DIR = Path(tempfile.mkdtemp(prefix="llamatelemetry-mypy-"))
        atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    return subprocess.run([sys.executable, "-m", "mypy", "--no-error-summary", "--cache-dir", str(_CACHE_DIR), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_package_type_checks():
    proc = _mypy("llamatelemetry", "--ignore-missing-imports")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_public_methods_have_their_real_types_under_mypy_strict():
    proc = _mypy("--strict", "--ignore-missing-imports", str(CASES / "ok_usage.py"))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mistakes_fail_mypy_strict():
    proc = _mypy("--strict", "--ignore-missing-imports", str(CASES / "bad_usage.py"))
    source = (CASES / "bad_usage.py").read_text().splitlines()
    expected = {i + 1 for i, line in enumerate(source) if line.rstrip().endswith("# error")}
    reported = {int(m.group(1)) for m in re.finditer(r"bad_usage\.py:(\d+): error", proc.stdout)}
    assert proc.returncode != 0
    assert expected <= reported, f"mistakes mypy accepted on lines {sorted(expected - reported)}:\n{proc.stdout}"


STREAMED = [
    (_resources.ChatCompletions.create, _calls.chat_completion), (_resources.AsyncChatCompletions.create, _calls.chat_completion),
    (_resources.Completions.create, _calls.completion), (_resources.AsyncCompletions.create, _calls.completion),
    (_resources.Messages.create, _calls.message), (_resources.AsyncMessages.create, _calls.message),
    (_resources.ClientMethods.chat_completion, _calls.chat_completion),
    (_resources.AsyncClientMethods.chat_completion, _calls.chat_completion),
]


def _shape(params):
    return [(p.name, p.kind, p.default) for p in params if p.name != "self"]


@pytest.mark.parametrize("method,builder", STREAMED)
def test_overloads_match_their_request_builder(method, builder):
    # The builders in _calls.py are the single source of parameters: the overloads restate them exactly.
    overloads = typing.get_overloads(method)
    assert len(overloads) == 3
    builder_shape = _shape(inspect.signature(builder).parameters.values())
    for overload in overloads:
        shape = _shape(inspect.signature(overload).parameters.values())
        # the stream parameter is the only one whose default may differ (Literal[True] has none)
        assert [p for p in shape if p[0] != "stream"] == [p for p in builder_shape if p[0] != "stream"]
        assert [p[0] for p in shape] == [p[0] for p in builder_shape]


def test_signatures_are_visible_to_inspect_and_async_methods_are_coroutines():
    sync, aio = LlamaCppClient("http://127.0.0.1:1", telemetry=False), AsyncLlamaCppClient("http://127.0.0.1:1", telemetry=False)
    for client in (sync, aio):
        for method, builder in ((client.chat.completions.create, _calls.chat_completion), (client.embed, _calls.embed),
                                (client.models.list, _calls.list_models), (client.messages.create, _calls.message)):
            assert list(inspect.signature(method).parameters) == list(inspect.signature(builder).parameters)
            assert method.__doc__ == builder.__doc__
    for name in ("create",):
        assert inspect.iscoroutinefunction(getattr(aio.chat.completions, name))
        assert not inspect.iscoroutinefunction(getattr(sync.chat.completions, name))
    for method in (aio.chat_completion, aio.embed, aio.tokenize, aio.models.list, aio.messages.create, aio.slots.list):
        assert inspect.iscoroutinefunction(method), method


# -- the overloads are generated from the builders, and the checked-in file is what the generator writes --

def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("gen_resources", ROOT / "scripts" / "gen_resources.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gen_resources"] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_generated_overloads_are_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "gen_resources.py"), "--check"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_the_generator_writes_every_overload_from_the_builder():
    gen = _generator()
    text = (ROOT / "llamatelemetry" / "_resources.py").read_text()
    # A parameter dropped from a generated overload is put back; a region removed is an error.
    assert gen.regenerate(text.replace("        reasoning_format: str | None = None,\n", "", 1)) == text
    [chat] = [m for m in gen.METHODS if (m.owner, m.name) == ("AsyncClientMethods", "chat_completion")]
    rendered = "\n".join(gen.render(chat))
    assert rendered.count("@overload") == 3 and "stream: Literal[True]," in rendered
    assert ") -> AsyncStream[types.ChatCompletionChunk]: ..." in rendered and "messages: _calls.Messages," in rendered
    with pytest.raises(AssertionError, match="no generated region"):
        gen.regenerate(text.replace("# <generated Messages.create", "# <elsewhere Messages.create"))
