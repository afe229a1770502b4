"""A gateway process for tests: `llmthrottle gateway` started from a config text, with the
environment its deployments and admin API read, and its key store at hand."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import openai

from llmthrottle.gateway import KeyStore

ADMIN, JWT_SECRET, UPSTREAM_KEY = "admin-secret", "jwt-secret", "upstream-secret"
ENV = {"LT_TEST_ADMIN": ADMIN, "LT_TEST_JWT": JWT_SECRET, "LT_UPSTREAM_KEY": UPSTREAM_KEY}


class GatewayProcess:
    def __init__(self, directory: Path, config: str, port: int) -> None:
        self.directory, self.port = directory, port
        self.config_path = directory / "llmthrottle.toml"
        self.config_path.write_text(config)
        self.log = open(directory / "gateway.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llmthrottle.cli", "gateway", "--config", str(self.config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **ENV},
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=1) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self.log.close()
                raise AssertionError(f"the gateway did not start: {(directory / 'gateway.log').read_text()}")
            time.sleep(0.05)
        self.keys = KeyStore(str(directory / "keys.sqlite"), cache_s=0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def key(self, **fields: Any) -> str:
        return self.keys.create(**{"tier": "pro", **fields})[0]

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key, max_retries=0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.keys.close()
            self.proc.terminate()
            self.proc.communicate(timeout=30)
            self.log.close()
