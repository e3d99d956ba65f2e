"""Every telemetry name llamatelemetry emits, in one place.

Pinned to the OpenTelemetry GenAI semantic conventions as of semconv v1.41 (status:
Development; names may still change upstream, so they are only ever spelled here).
Our own additions live under ``llamacpp.`` (llama-server's timings) and ``llamatelemetry.``.
"""

from __future__ import annotations

SEMCONV_VERSION = "1.41.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
INSTRUMENTATION_NAME = "llamatelemetry"
PROVIDER_NAME = "llama.cpp"

# -- span attributes: request --
OPERATION_NAME = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
REQUEST_TOP_P = "gen_ai.request.top_p"
REQUEST_TOP_K = "gen_ai.request.top_k"
REQUEST_SEED = "gen_ai.request.seed"
REQUEST_STOP_SEQUENCES = "gen_ai.request.stop_sequences"
REQUEST_FREQUENCY_PENALTY = "gen_ai.request.frequency_penalty"
REQUEST_PRESENCE_PENALTY = "gen_ai.request.presence_penalty"
REQUEST_STREAM = "gen_ai.request.stream"

# -- span attributes: response --
RESPONSE_ID = "gen_ai.response.id"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
RESPONSE_TIME_TO_FIRST_CHUNK = "gen_ai.response.time_to_first_chunk"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.usage.reasoning.output_tokens"
ERROR_TYPE = "error.type"

# -- opt-in content --
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SYSTEM_INSTRUCTIONS = "gen_ai.system_instructions"
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"

# -- llama-server's own timings (response "timings" object) --
LLAMACPP_TIMING_FIELDS = (
    "prompt_n", "prompt_ms", "prompt_per_token_ms", "prompt_per_second", "cache_n",
    "predicted_n", "predicted_ms", "predicted_per_token_ms", "predicted_per_second",
    "draft_n", "draft_n_accepted",
)
LLAMACPP_TIMING_ATTRIBUTES = {f: f"llamacpp.timings.{f}" for f in LLAMACPP_TIMING_FIELDS}

# -- llamatelemetry's own span attributes and events --
TIME_TO_FIRST_CONTENT = "llamatelemetry.response.time_to_first_content"
TIME_PER_OUTPUT_TOKEN = "llamatelemetry.response.time_per_output_token"
REASONING_BUDGET_EXHAUSTED = "llamatelemetry.reasoning.budget_exhausted"
#: How gen_ai.usage.reasoning.output_tokens was counted: server, exhausted, stream_position,
#: output_minus_answer or reasoning_text (see llamatelemetry.telemetry.reasoning).
REASONING_COUNT_METHOD = "llamatelemetry.reasoning.count_method"
STREAM_CUT_SHORT = "llamatelemetry.stream.cut_short"
STREAM_CHUNKS = "llamatelemetry.stream.chunks"
EVENT_REASONING_BUDGET_EXHAUSTED = "llamatelemetry.reasoning.budget_exhausted"

# -- metrics --
METRIC_OPERATION_DURATION = "gen_ai.client.operation.duration"
METRIC_TOKEN_USAGE = "gen_ai.client.token.usage"
METRIC_TIME_TO_FIRST_CHUNK = "gen_ai.client.operation.time_to_first_chunk"
METRIC_TIME_PER_OUTPUT_CHUNK = "gen_ai.client.operation.time_per_output_chunk"
METRIC_REASONING_BUDGET_EXHAUSTED = "llamatelemetry.reasoning.budget_exhausted"
TOKEN_TYPE = "gen_ai.token.type"
TOKEN_TYPE_INPUT = "input"
TOKEN_TYPE_OUTPUT = "output"
#: Not in semconv (which has input/output only): reasoning tokens are a subset of output.
TOKEN_TYPE_REASONING = "reasoning"

#: Advised bucket boundaries (semconv): seconds, doubling from 10 ms.
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
#: Advised bucket boundaries (semconv): tokens, powers of 4.
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)

# -- server-side metrics (a gateway in front of llama-server records these; semconv v1.41 names) --
METRIC_SERVER_REQUEST_DURATION = "gen_ai.server.request.duration"
METRIC_SERVER_TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
METRIC_SERVER_TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
#: Advised bucket boundaries (semconv) for gen_ai.server.time_to_first_token, seconds.
SERVER_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
#: Advised bucket boundaries (semconv) for gen_ai.server.time_per_output_token, seconds.
SERVER_TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)

# -- who is calling (set by a gateway) --
USER_AGENT_ORIGINAL = "user_agent.original"
CLIENT_NAME = "llamatelemetry.client.name"
#: Set by the gateway when ``--min-max-tokens`` raised the client's budget: the value the client sent.
PROXY_MAX_TOKENS_RAISED_FROM = "llamatelemetry.proxy.max_tokens_raised_from"
#: The gateway's own counter: every forwarded request, inference or not.
METRIC_PROXY_REQUESTS = "llamatelemetry.proxy.requests"

# -- the newer GenAI conventions (open-telemetry/semantic-conventions-genai, model/gen-ai/token-metrics.yaml) --
#: Opt-in switch defined by the conventions: a comma-separated list in this variable.
STABILITY_OPT_IN_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
LATEST_EXPERIMENTAL = "gen_ai_latest_experimental"
#: Counters (the "proxy for cost"), each with gen_ai.token.modality; replace gen_ai.client.token.usage.
METRIC_INFERENCE_USAGE_INPUT_TOKENS = "gen_ai.client.inference.usage.input_tokens"
METRIC_INFERENCE_USAGE_OUTPUT_TOKENS = "gen_ai.client.inference.usage.output_tokens"
METRIC_INFERENCE_USAGE_CACHE_READ_INPUT_TOKENS = "gen_ai.client.inference.usage.cache_read.input_tokens"
METRIC_INFERENCE_USAGE_REASONING_OUTPUT_TOKENS = "gen_ai.client.inference.usage.reasoning.output_tokens"
#: Per-operation histograms (percentiles only), with error.type on failures.
METRIC_INFERENCE_OPERATION_INPUT_TOKENS = "gen_ai.client.inference.operation.input_tokens"
METRIC_INFERENCE_OPERATION_OUTPUT_TOKENS = "gen_ai.client.inference.operation.output_tokens"
TOKEN_MODALITY = "gen_ai.token.modality"
TOKEN_MODALITY_TEXT = "text"
#: Recorded with a 0 when an operation got no usage (failed, or cut short before usage arrived).
TOKEN_MODALITY_UNKNOWN = "unknown"


def latest_experimental(env: "dict[str, str] | None" = None) -> bool:
    """True when ``$OTEL_SEMCONV_STABILITY_OPT_IN`` lists ``gen_ai_latest_experimental``.

    Example::

        latest_experimental({"OTEL_SEMCONV_STABILITY_OPT_IN": "http,gen_ai_latest_experimental"})  # True
    """
    import os

    value = (env if env is not None else os.environ).get(STABILITY_OPT_IN_ENV, "")
    return LATEST_EXPERIMENTAL in (part.strip() for part in value.split(","))


#: Attributes allowed on metrics (low cardinality only).
METRIC_ATTRIBUTES = (OPERATION_NAME, PROVIDER, REQUEST_MODEL, RESPONSE_MODEL, SERVER_ADDRESS, SERVER_PORT, ERROR_TYPE, CLIENT_NAME)


# -- router mode (llama-server --models-dir: many models behind one port; set by the gateway) --
#: True on a span whose request found its model not loaded (unloaded, loading or asleep) and waited for it.
MODEL_COLD_START = "llamatelemetry.model.cold_start"
#: Seconds the request waited for its model to load (or wake), from its arrival to the router's ``loaded``.
MODEL_LOAD_WAIT = "llamatelemetry.model.load_wait"
#: The model's router state when the cold-started request arrived: ``unloaded``, ``loading``, ``sleeping``, ``failed``.
MODEL_STATE_BEFORE = "llamatelemetry.model.state_before"
#: Histogram (seconds) of those waits, per model (gen_ai.request.model) and client (llamatelemetry.client.name).
METRIC_MODEL_LOAD_WAIT = "llamatelemetry.model.load_wait"
#: Advised bucket boundaries for load waits, seconds (a scripted model loads in ~0.1 s, a 30 GB one in a minute).
MODEL_LOAD_WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
#: ``error.type`` of the router's own errors about the requested model (client and gateway alike).
ERROR_TYPE_MODEL_NOT_FOUND = "model_not_found"
ERROR_TYPE_MODEL_NOT_LOADED = "model_not_loaded"
ERROR_TYPE_MODEL_LOAD_FAILED = "model_load_failed"

# -- what agents run into on a shared server (llamatelemetry.telemetry.agent_signals) --
#: Seconds the request spent outside a slot: wall time minus llama-server's prompt_ms + predicted_ms
#: (queueing for a free slot plus the server's fixed per-request overhead; an upper bound on the wait).
QUEUE_WAIT = "llamatelemetry.request.queue_wait"
#: The slot's context size (n_ctx): from the 400 of an overflow, else from the server's /props.
CONTEXT_N_CTX = "llamatelemetry.context.n_ctx"
#: Prompt tokens llama-server counted against n_ctx (on an overflow: its n_prompt_tokens).
CONTEXT_PROMPT_TOKENS = "llamatelemetry.context.prompt_tokens"
#: Prompt tokens / n_ctx (0-1; above 1 on an overflow).
CONTEXT_UTILIZATION = "llamatelemetry.context.utilization"
#: error.type of a prompt that does not fit the slot's context (llama-server's own error type).
ERROR_TYPE_CONTEXT_OVERFLOW = "exceed_context_size_error"
#: Tool calls in the response, and how many of them were malformed.
TOOL_CALLS_COUNT = "llamatelemetry.tool_calls.count"
TOOL_CALLS_MALFORMED_COUNT = "llamatelemetry.tool_calls.malformed_count"
#: Why a tool call was malformed: invalid_arguments, missing_call, parse_error (event and metric attribute).
TOOL_CALL_MALFORMED_REASON = "llamatelemetry.tool_call.malformed_reason"
EVENT_TOOL_CALL_MALFORMED = "llamatelemetry.tool_call.malformed"
#: Speculative decoding: tokens drafted and accepted (llama-server's timings.draft_n / draft_n_accepted).
SPECULATIVE_DRAFT_TOKENS = "llamatelemetry.speculative.draft_tokens"
SPECULATIVE_ACCEPTED_TOKENS = "llamatelemetry.speculative.accepted_tokens"
METRIC_QUEUE_WAIT = "llamatelemetry.request.queue_wait"
METRIC_CONTEXT_UTILIZATION = "llamatelemetry.context.utilization"
METRIC_CONTEXT_OVERFLOWS = "llamatelemetry.context.overflows"
METRIC_TOOL_CALLS = "llamatelemetry.tool_calls"
METRIC_TOOL_CALLS_MALFORMED = "llamatelemetry.tool_calls.malformed"
METRIC_SPECULATIVE_DRAFT_TOKENS = "llamatelemetry.speculative.draft_tokens"
METRIC_SPECULATIVE_ACCEPTED_TOKENS = "llamatelemetry.speculative.accepted_tokens"
#: Prompt tokens (cached included) and the cached part: their rates give the prompt-cache hit ratio.
METRIC_PROMPT_TOKENS = "llamatelemetry.prompt.tokens"
METRIC_PROMPT_CACHED_TOKENS = "llamatelemetry.prompt.cached_tokens"
#: Seconds: an idle server's overhead is milliseconds, a queue behind agents minutes.
QUEUE_WAIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
#: Fractions of n_ctx; the top buckets are fine-grained where truncation starts.
UTILIZATION_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
