"""Configuration: the pools.yaml schema (``schema``), its loader (``loader``) and per-pool environments (``envs``)."""

from orchestrator.config.loader import load_config, parse_config
from orchestrator.config.schema import Config, Pool, parse_bytes

__all__ = ["Config", "Pool", "load_config", "parse_bytes", "parse_config"]
