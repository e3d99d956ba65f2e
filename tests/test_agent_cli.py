"""A real agent CLI through the gateway: Claude Code -> ``llamatelemetry proxy`` -> llama-server, offline.

Claude Code sends what agents really send: streamed ``POST /v1/messages?beta=true`` with a prompt of
~16k tokens (tool definitions, several system parts) and a few side requests of its own. The scripted
Qwen3.5 model (64k context, a template that merges system messages) answers every one with the script,
so the CLI's output and the token counts are exact. A TCP tap between gateway and llama-server keeps
llama-server's own responses, the reference for the input token counts the gateway recorded.
"""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from agent_cli import CLAUDE_CODE_VERSION, claude_code_env, ensure_claude_code
from gateway_process import GatewayProcess
from llamatelemetry.provision.model import AGENT_SCRIPT, cached_thinking_model
from llamatelemetry.provision.server import LlamaServer
from proxy_helpers import TcpTap

PROMPT = "Say hello."
#: Per-slot context: Claude Code's main prompt is ~16k tokens of the Qwen tokenizer.
SLOT_CONTEXT = 24576


@pytest.fixture(scope="module")
def claude() -> Path:
    try:
        return ensure_claude_code()
    except RuntimeError as exc:  # the message says what to install or that the registry is unreachable
        pytest.fail(f"Claude Code {CLAUDE_CODE_VERSION} is needed for this test: {exc}")


@pytest.fixture(scope="module")
def agent_server(llama_server_binary: Path) -> Iterator[LlamaServer]:
    # 4 slots: Claude Code runs its side requests concurrently with the main one; with fewer slots they
    # queue and each holds one of llama-server's few HTTP threads.
    server = LlamaServer(cached_thinking_model(AGENT_SCRIPT), binary=llama_server_binary, alias=AGENT_SCRIPT.family,
                         ctx_size=SLOT_CONTEXT, parallel=4)
    with server:
        yield server


@pytest.fixture(scope="module")
def run(claude: Path, agent_server: LlamaServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One ``claude -p`` run through a real gateway subprocess; what everyone saw, for the tests below."""
    home = tmp_path_factory.mktemp("claude-home")
    with TcpTap(agent_server.host, agent_server.port) as tap:
        gateway = GatewayProcess(tap.url)
        try:
            done = subprocess.run([str(claude), "-p", PROMPT], env=claude_code_env(gateway.url, AGENT_SCRIPT.family, home),
                                  cwd=home, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=120)
            sent = len(re.findall(rb"POST /v1/messages(?:\?\S*)? HTTP/", bytes(tap.to_server)))
            recent = _wait_until_recorded(gateway, sent)
            metrics = httpx.get(gateway.admin_url + "/metrics", timeout=5).text
            yield {"done": done, "recent": recent, "metrics": metrics, "sent": sent,
                   "server_said": bytes(tap.to_client).decode("utf-8", "replace")}
        finally:
            gateway.stop()


def _wait_until_recorded(gateway: GatewayProcess, sent: int, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Telemetry is recorded after the answer went out: wait until every request Claude Code sent is in."""
    deadline = time.monotonic() + timeout
    while True:
        items = gateway.recent()
        if len([r for r in items if r["endpoint"] == "/v1/messages"]) >= sent:
            return items
        assert time.monotonic() < deadline, f"{sent} requests went upstream, the gateway recorded: {items}"
        time.sleep(0.05)


def _main_request(recent: list[dict[str, Any]]) -> dict[str, Any]:
    return max(recent, key=lambda r: r["input_tokens"] or 0)


def test_claude_code_answers_through_the_gateway(run):
    done = run["done"]
    assert done.returncode == 0, f"claude exited {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.strip() == AGENT_SCRIPT.answer_text


def test_the_gateway_recorded_claude_codes_main_request_exactly(run):
    main = _main_request(run["recent"])
    # llama-server's own count for the prompt, from its responses as they crossed the wire.
    reported = max(int(n) for n in re.findall(r'"input_tokens":(\d+)', run["server_said"]))
    expected = {
        "client": "claude-code", "method": "POST",
        "endpoint": "/v1/messages",  # the ?beta=true query is not part of it
        "model": AGENT_SCRIPT.family, "stream": True, "status": 200, "error_type": None,
        "input_tokens": reported,
        "output_tokens": AGENT_SCRIPT.output_tokens, "reasoning_tokens": AGENT_SCRIPT.reasoning_tokens,
    }
    assert {key: main[key] for key in expected} == expected, run["recent"]
    assert 10_000 <= main["input_tokens"] <= SLOT_CONTEXT  # an agent-sized prompt, and it fit


def test_every_request_of_the_run_is_claude_codes(run):
    recent = run["recent"]
    assert run["sent"] >= 2  # the main request and Claude Code's own side requests
    assert len(recent) == run["sent"]  # nothing else went through the gateway, and every request was recorded
    assert {r["client"] for r in recent} == {"claude-code"}
    assert {r["endpoint"] for r in recent} == {"/v1/messages"}
    assert {r["model"] for r in recent} == {AGENT_SCRIPT.family}  # ANTHROPIC_DEFAULT_HAIKU_MODEL took effect


def test_the_agent_template_merges_system_messages(agent_server):
    """Qwen3.5's own template raises "System message must be at the beginning." on the second one
    (a 500 from llama-server); OpenAI-dialect agents send system reminders mid-conversation."""
    messages = [{"role": "system", "content": "Part one."}, {"role": "user", "content": "hi"},
                {"role": "system", "content": [{"type": "text", "text": "Part two."}]}, {"role": "user", "content": "again"}]
    rendered = httpx.post(agent_server.base_url + "/apply-template", json={"messages": messages}, timeout=30)
    assert rendered.status_code == 200, rendered.text
    assert rendered.json()["prompt"] == ("<|im_start|>system\nPart one.\n\nPart two.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                                         "<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n<think>\n")


def test_readme_shows_the_command_line_this_test_runs():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f'claude -p "{PROMPT}"' in readme
    for name in claude_code_env("http://127.0.0.1:8089", "my-model", Path("/home")):
        if name.startswith(("ANTHROPIC_", "DISABLE_", "CLAUDE_CODE_")):
            assert re.search(rf"^export .*\b{name}=", readme, re.M), f"README does not export {name}"


def test_admin_metrics_carry_the_client_name(run):
    metrics = run["metrics"]
    token_usage = [line for line in metrics.splitlines() if line.startswith("gen_ai_client_token_usage_count{")
                   and 'llamatelemetry_client_name="claude-code"' in line]
    assert token_usage, metrics[:3000]
    assert any('gen_ai_token_type="input"' in line for line in token_usage)
    assert re.search(r'^llamatelemetry_proxy_requests_total\{[^}]*llamatelemetry_client_name="claude-code"', metrics, re.M)
