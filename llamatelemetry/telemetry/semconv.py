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

#: Attributes allowed on metrics (low cardinality only).
METRIC_ATTRIBUTES = (OPERATION_NAME, PROVIDER, REQUEST_MODEL, RESPONSE_MODEL, SERVER_ADDRESS, SERVER_PORT, ERROR_TYPE)
