"""Typed settings for every artwatch process.

Sources, highest priority first: keyword arguments (tests), environment
variables (``ARTWATCH_`` prefix, ``__`` between nested keys), the TOML file
named by ``ARTWATCH_CONFIG``, then the bundled ``defaults.toml``.

Build the settings once at an entry point with :func:`load_settings` and pass
them (or the section a function needs) down. Nothing in artwatch imports a
global settings object.

Unknown keys are errors, in files and in ``ARTWATCH_*`` variables alike, so a
typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

__all__ = [
    "AlertSettings",
    "BlobSettings",
    "ConfigError",
    "CrawlerSettings",
    "IndexSettings",
    "MatchingSettings",
    "NoticeSettings",
    "Settings",
    "SharedSettings",
    "WebSettings",
    "WorkersSettings",
    "load_settings",
]

DEFAULTS_FILE = Path(__file__).with_name("defaults.toml")


class ConfigError(Exception):
    """The configuration cannot be used; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BlobSettings(_Section):
    """Where blobs live (``storage.blobs.build_blob_store``); see defaults.toml.

    S3 credentials are not settings: boto3 reads them from the environment.
    """

    kind: Literal["folder", "s3"] = "folder"
    path: str = ""
    url: str = ""
    endpoint_url: str = ""
    region: str = ""
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 60.0
    max_attempts: int = 3


class SharedSettings(_Section):
    """Where the state that processes share lives, besides blobs (see defaults.toml).

    "folder": under DATA_DIR (one machine). "services": database tables and
    blob-store objects, so any number of machines can share it.
    """

    kind: Literal["folder", "services"] = "folder"


class IndexSettings(_Section):
    backend: Literal["embedded", "server"] = "embedded"
    url: str = ""
    api_key: str = ""
    collection: str = "works"


class MatchingSettings(_Section):
    clip_model: str = "ViT-B-32"
    clip_pretrained: str = ""
    use_embedder: bool = True
    device: str = "auto"
    batch_size: int = 32
    #: Copy-detection descriptor (matching.signals.sscd): "sscd_distilled", "sscd", the path of
    #: an .onnx file, or "" for none. Works and whole uploads are resized to a short side of
    #: ``descriptor_side``; with ``descriptor_crops`` an upload's crop grid (for partial copies) is
    #: also embedded, at ``descriptor_crop_side``.
    descriptor: str = "sscd_distilled"
    descriptor_side: int = 224
    #: "short_side" keeps the aspect ratio (measured on the bench); "square" resizes to side x side,
    #: so any images batch in one call (the GPU path). Works and uploads must use the same.
    descriptor_resize: Literal["short_side", "square"] = "short_side"
    descriptor_crops: bool = False
    descriptor_crop_side: int = 128
    descriptor_threads: int = 1
    threshold: float = 0.5
    #: malloc for engine processes (`artwatch worker`, `scan`'s pool): "jemalloc" keeps a
    #: large registry's heap from slowing everything else down (matching.allocator).
    allocator: Literal["jemalloc", "system"] = "jemalloc"
    #: Where local-feature candidates come from: "postings" (the in-process inverted
    #: file) or "sparse" (the works' visual words as a sparse vector in the vector
    #: index, matching.sparse_words; verification is the same either way).
    candidates: Literal["postings", "sparse"] = "postings"
    #: Threads that read and quantise works when an engine loads many at once (a
    #: retrain, a start with no usable postings snapshot, 16 or more registrations
    #: replayed together); 0: half the CPUs, 1 to 4. The postings are the same
    #: however many.
    load_threads: int = Field(default=0, ge=0)


class CrawlerSettings(_Section):
    user_agent: str = "artwatch/0.1"
    contact_url: str = ""
    max_image_bytes: int = 20_000_000
    max_page_bytes: int = 5_000_000
    connect_timeout: float = 5.0
    read_timeout: float = 20.0
    max_redirects: int = 5
    allow_internal: list[str] = []
    obey_robots: bool = True
    requests_per_second: float = 1.0
    max_concurrency_per_host: int = 2
    #: Where per-host limits are shared: "" follows the broker (Redis when it
    #: is Redis), "local" keeps them per process, redis://... names a server.
    politeness_url: str = ""


class NoticeSettings(_Section):
    hosts_file: str = ""
    smtp_host: str = "localhost"
    smtp_port: int = 25
    smtp_user: str = ""
    smtp_password: str = ""
    smtp_starttls: bool = False
    from_address: str = "artwatch@localhost"
    followup_days: int = 7
    sends_per_host_per_hour: int = 20


class WebSettings(_Section):
    host: str = "127.0.0.1"
    port: int = 8000
    base_url: str = "http://127.0.0.1:8000"
    secret_key: str = ""
    #: Addresses or networks (CIDR) of reverse proxies whose X-Forwarded-For names the
    #: client. Empty: the header is ignored and the connecting address is the client.
    trusted_proxies: list[str] = []
    max_request_bytes: int = 200_000_000
    anonymous_request_bytes: int = 65_536
    heavy_threads: int = 4

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        import ipaddress

        for item in value:
            try:
                ipaddress.ip_network(item.strip(), strict=False)
            except ValueError:
                raise ValueError(f"{item!r} is not an IP address or network (e.g. 10.0.0.0/8)") from None
        return [item.strip() for item in value]


class WorkersSettings(_Section):
    """Celery topology and reliability knobs; see the comments in defaults.toml."""

    routes: dict[str, str] = {}
    prefetch: dict[str, int] = {}
    concurrency: dict[str, int] = {}
    embed_stage: bool = False
    embed_max_batch: int = 32
    embed_max_wait_ms: int = 20
    embed_dtype: Literal["float16", "bfloat16"] = "float16"
    visibility_timeout_s: int = 3600
    restore_interval_s: int = 10
    max_deliveries: int = 3
    stall_after_s: int = Field(default=7200, ge=0)
    max_redispatches: int = Field(default=3, ge=0)
    stall_max_backlog: int = Field(default=1000, ge=0)
    metrics_port: int = 0
    maintenance: Literal["auto", "queue", "inline"] = "auto"


class AlertSettings(_Section):
    default_mode: Literal["instant", "digest", "off"] = "instant"
    digest_hour_utc: int = 8


class _TomlSource(PydanticBaseSettingsSource):
    """Reads one TOML file; a missing optional file contributes nothing."""

    def __init__(self, settings_cls: type[BaseSettings], path: Path | None) -> None:
        super().__init__(settings_cls)
        self._data: dict[str, Any] = {}
        if path is not None:
            try:
                self._data = tomllib.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError as exc:
                raise ConfigError(f"configuration file not found: {path}") from exc
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML: {exc}") from exc

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._data.get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(self._data)


class Settings(BaseSettings):
    """Everything one artwatch process needs to know, validated."""

    model_config = SettingsConfigDict(
        env_prefix="ARTWATCH_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    data_dir: Path = Path("data")
    database_url: str = ""
    broker_url: str = ""
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    blobs: BlobSettings = BlobSettings()
    shared: SharedSettings = SharedSettings()
    index: IndexSettings = IndexSettings()
    matching: MatchingSettings = MatchingSettings()
    crawler: CrawlerSettings = CrawlerSettings()
    notices: NoticeSettings = NoticeSettings()
    web: WebSettings = WebSettings()
    alerts: AlertSettings = AlertSettings()
    workers: WorkersSettings = WorkersSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        user_file = os.environ.get("ARTWATCH_CONFIG")
        return (
            init_settings,
            env_settings,
            _TomlSource(settings_cls, Path(user_file) if user_file else None),
            _TomlSource(settings_cls, DEFAULTS_FILE),
        )

    # Derived locations. Kept as methods so the settings stay plain data.
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'artwatch.db').resolve()}"

    def resolved_broker_url(self) -> str:
        return self.broker_url or "filesystem://"

    def resolved_politeness_url(self) -> str:
        """The Redis that shares per-host crawl limits between processes, or ""
        for limits per process (``crawler.politeness_url``, see defaults.toml)."""
        url = self.crawler.politeness_url.strip()
        if url == "local":
            return ""
        if url:
            return url
        return self.broker_url if self.broker_url.startswith(("redis://", "rediss://")) else ""

    def broker_dir(self) -> Path:
        return (self.data_dir / "broker").resolve()

    def blob_dir(self) -> Path:
        return Path(self.blobs.path).resolve() if self.blobs.path else (self.data_dir / "blobs").resolve()

    def index_dir(self) -> Path:
        return (self.data_dir / "index").resolve()

    @property
    def embedded_broker(self) -> bool:
        return not self.broker_url


_ENV_SKIP = {"ARTWATCH_CONFIG"}


def _check_env_keys() -> None:
    """Refuse ARTWATCH_* variables that name no setting (pydantic ignores them)."""
    known_top = {name.upper() for name in Settings.model_fields}
    for key in os.environ:
        if not key.startswith("ARTWATCH_") or key in _ENV_SKIP or key.startswith("ARTWATCH_TEST_"):
            continue
        parts = key[len("ARTWATCH_") :].split("__")
        top = parts[0]
        if top not in known_top:
            raise ConfigError(f"unknown configuration key in environment: {key}")
        if len(parts) > 1:
            field = Settings.model_fields[top.lower()]
            section = field.annotation
            if (
                isinstance(section, type)
                and issubclass(section, BaseModel)
                and parts[1].lower() not in section.model_fields
            ):
                raise ConfigError(f"unknown configuration key in environment: {key}")


def load_settings(**overrides: Any) -> Settings:
    """Build and validate settings, turning validation failures into ConfigError."""
    _check_env_keys()
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "(top level)"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown configuration key: {where}")
            else:
                problems.append(f"{where}: {err['msg']}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems)) from None
