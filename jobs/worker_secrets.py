"""Secrets kept out of the Flink workers' environment (which Beam writes to the Flink log).

A local run's JVM, and through it every Python worker, inherits the environment of the
``klineflow job run`` process, and Beam's ``DefaultJobBundleFactory`` logs a worker's whole
environment at INFO when it closes one. So before the JVM starts the job hands every secret
to the workers in a file instead (mode 0600, beside the sink secrets, see
``jobs.job.sink_secrets_path``) and removes the variables that hold one from its own
environment: the inference API key (``INFERENCE_API_KEY`` or the variable the settings
name), and every variable whose value is a URL with a password (``REDIS_URL``,
``CLICKHOUSE_URL``, ...). The settings were read from the environment already.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from dataclasses import replace
from pathlib import Path

from connectors.private_file import write_private_file
from connectors.redaction import redact_url
from jobs.config import JobSettings


def api_key_path(secrets_dir: Path, job_name: str) -> Path:
    """Where a run keeps the inference API key for its workers."""
    return secrets_dir / f"{job_name}-inference-key"


def with_api_key_in_file(settings: JobSettings, secrets_dir: Path) -> JobSettings:
    """``settings`` whose inference key (when it comes from the environment) is read from a
    private file by the workers instead; unchanged when there is no key, a file gives it, or
    the job calls no inference API."""
    inference = settings.signals.inference
    if inference.api_key_file or not (settings.signals.enabled and inference.url):
        return settings  # a file gives the key already, or no worker calls the API
    key = os.environ.get(inference.api_key_env, "").strip()
    if not key:
        return settings
    path = write_private_file(api_key_path(secrets_dir, settings.job_name), key)
    inference = replace(inference, api_key_file=str(path.resolve()))
    return settings.with_overrides(signals=replace(settings.signals, inference=inference))


def secret_variables(settings: JobSettings, environ: MutableMapping[str, str]) -> list[str]:
    """The names in ``environ`` that hold a secret: the API key's variable, any variable
    holding the key's value, and every URL with a password."""
    key_variable = settings.signals.inference.api_key_env
    key = environ.get(key_variable, "").strip()
    names = []
    for name, value in environ.items():
        if name == key_variable or (key and key in value) or redact_url(value) != value:
            names.append(name)
    return sorted(names)


def remove_secret_variables(
    settings: JobSettings, environ: MutableMapping[str, str] = os.environ
) -> list[str]:
    """Remove :func:`secret_variables` from ``environ`` (this process's by default); returns
    their names. Call it once the settings are read and before the JVM starts."""
    names = secret_variables(settings, environ)
    for name in names:
        del environ[name]
    return names


__all__ = ["api_key_path", "remove_secret_variables", "secret_variables", "with_api_key_in_file"]
