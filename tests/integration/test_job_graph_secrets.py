"""The job graph of the whole job, as shipped to the cluster, holds no password."""

from __future__ import annotations

from pathlib import Path

from connectors.flink_topology import serialized_job_graph
from connectors.inference import InferenceSettings
from jobs.config import JobSettings, SinkConfig
from jobs.job import attach_job, create_environment, inference_secrets_path, sink_secrets_path
from jobs.signals import SignalConfig
from tests.integration.conftest import TopicNames

CLICKHOUSE_PASSWORD = "graph-ch-pw-9311"
REDIS_PASSWORD = "graph-redis-pw-7720"
INFERENCE_PASSWORD = "graph-inference-pw-5183"


def test_the_serialized_job_graph_holds_no_password(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    settings = JobSettings(
        kafka_bootstrap=kafka_bootstrap,
        klines_topic=kafka_topics.raw,
        dlq_topic=kafka_topics.dlq,
        checkpoint_dir=tmp_path / "checkpoints",
        job_name="graph-secrets",
        sinks=SinkConfig(
            clickhouse_url=f"clickhouse://app:{CLICKHOUSE_PASSWORD}@db-host-graph:9000/crypto_kline",
            redis_url=f"redis://:{REDIS_PASSWORD}@redis-host-graph:6379/0",
        ),
        # The inference operator's settings are pickled too: its URL and its L2 cache's.
        signals=SignalConfig(
            inference=InferenceSettings(
                url=f"https://svc:{INFERENCE_PASSWORD}@llm-host-graph/v1",
                l2_redis_url=f"redis://:{REDIS_PASSWORD}@redis-host-graph:6379/0",
            )
        ),
        flink_overrides=(("rest.port", "0"),),
    )
    env = create_environment(settings)
    attach_job(env, settings)  # builds the graph only; nothing connects to the sinks
    graph = serialized_job_graph(env)
    # The search works: the sink's redacted settings are in there (pickled Python).
    assert b"db-host-graph" in graph
    assert b"redis-host-graph" in graph
    assert b"llm-host-graph" in graph
    for password in (CLICKHOUSE_PASSWORD, REDIS_PASSWORD, INFERENCE_PASSWORD):
        assert password.encode() not in graph
    # The workers get them from the secrets files instead.
    assert CLICKHOUSE_PASSWORD in sink_secrets_path(settings).read_text()
    assert INFERENCE_PASSWORD in inference_secrets_path(settings).read_text()
