"""config.py
=========

Typed settings from one TOML file. Every key has a default (see ``sonoshot.example.toml``,
which documents each one); a wrong key, type or value raises :class:`ConfigError` naming the
key and what was expected, and the CLI exits with status 2.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

CONFIG_ENV = "SONOSHOT_CONFIG"


class ConfigError(ValueError):
    """A configuration key is unknown or its value has the wrong type or range."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config key '{key}': {message}")
        self.key = key


@dataclass(frozen=True)
class TLSConfig:
    certificate: str = ""  # PEM certificate of this node; empty disables TLS
    private_key: str = ""  # PEM private key for `certificate`
    ca_certificate: str = ""  # PEM bundle of CAs that peers' certificates must chain to
    require_client_certificate: bool = True  # mutual TLS: reject peers without a valid certificate

    @property
    def enabled(self) -> bool:
        return bool(self.certificate)


@dataclass(frozen=True)
class NetworkConfig:
    ae_title: str = "SONOSHOT"  # called AE title this node answers to
    enforce_called_ae_title: bool = True  # reject associations addressed to another AE title
    bind_address: str = "127.0.0.1"  # listen address; 0.0.0.0 to accept from the network
    port: int = 11112  # DICOM listen port
    allowed_calling_ae_titles: tuple[str, ...] = ()  # empty: any calling AE title is accepted
    max_associations: int = 10  # concurrent associations; more are rejected (transient)
    request_timeout_s: float = 5.0  # a new connection must send its A-ASSOCIATE-RQ within this time
    max_pending_per_address: int = 8  # connections not yet associated, per peer address; more are closed
    max_pending: int = 64  # connections not yet associated, in total; more are closed
    acse_timeout_s: float = 30.0  # association negotiation and release timeout
    dimse_timeout_s: float = 60.0  # timeout waiting for a DIMSE message
    network_timeout_s: float = 60.0  # idle connection timeout, also the longest wait for one PDU
    max_pdu_size: int = 1048576  # largest P-DATA PDU we accept (advertised); 0: unlimited (unsafe)
    stream_above_mb: int = 8  # C-STORE datasets larger than this go to the spool as they arrive
    extra_transfer_syntaxes: tuple[str, ...] = ()  # UIDs accepted on top of the built-in list
    extra_sop_classes: tuple[str, ...] = ()  # private storage SOP class UIDs to accept as well
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True)
class StorageConfig:
    spool_dir: Path = Path("var/spool")  # received instances, exactly as sent (contains PHI)
    work_dir: Path = Path("var/work")  # de-identified working copies
    quarantine_dir: Path = Path("var/quarantine")  # a JSON report (no PHI) per quarantined instance
    min_free_mb: int = 500  # refuse C-STORE with 0xA700 below this much free disk
    fsync: bool = True  # fsync each instance before acknowledging it


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///var/sonoshot.db"  # any SQLAlchemy URL, e.g. postgresql+psycopg://...


@dataclass(frozen=True)
class CompletionConfig:
    quiet_period_s: float = 30.0  # a study is complete after this long without a new instance
    max_wait_s: float = 900.0  # ... or this long after its first instance, whatever is still open
    sweep_interval_s: float = 0.5  # how often the completion sweep runs (in process a study completes as its quiet period ends; in a cluster up to this much later)


@dataclass(frozen=True)
class PixelMask:
    """Burned-in text mask for images without usable ultrasound regions (CTP style signature)."""

    manufacturer: str = ""  # matched case-insensitively as a prefix of (0008,0070)
    model: str = ""  # matched case-insensitively as a prefix of (0008,1090); empty: any
    rows: int = 0
    columns: int = 0
    keep: tuple[tuple[int, int, int, int], ...] = ()  # [x0, y0, x1, y1] inclusive boxes of image data


@dataclass(frozen=True)
class DeidConfig:
    key_file: Path = Path("var/deid.key")  # secret for keyed pseudonyms (>= 32 bytes); `sonoshot keygen`
    retain_longitudinal_modified_dates: bool = True  # shift dates by a keyed per-patient offset
    retain_patient_characteristics: bool = False  # keep sex, age, size, weight
    retain_device_identity: bool = False  # keep device serial numbers and station names
    clean_descriptors: bool = True  # keep descriptions after removing PHI (False: remove them)
    clean_pixel_data: bool = True  # blank outside the ultrasound regions (or device mask) and burned-in text
    ocr: bool = True  # verify cleaned pixels with tesseract OCR; fail closed if it is missing
    ocr_max_frames: int = 8  # frames OCR'd per instance (all frames of shorter clips)
    pixel_masks: tuple[PixelMask, ...] = ()  # masks for images without ultrasound regions
    ocr_min_score: float = 85.0  # fuzzy OCR match score (50-100) at which a PHI string counts as found
    text_detection_frames: int = 4  # frames of a clip searched for burned-in text (the union is blanked)
    text_detector_threads: int = 0  # onnxruntime threads of the text detector; 0: 2 on more than 2 cores, else 1
    ahead: bool = True  # de-identify each instance during its study's quiet period (receiver and stage in one process)


@dataclass(frozen=True)
class DetectorConfig:
    bundle: str = ""  # detector bundle folder from `sonoshot fit`; "demo": the built-in demo; empty: zero-shot or hold studies
    backbone: str = "auto"  # auto: biomedclip when its files are present, else efficientnet-lite0
    biomedclip_path: str = ""  # local folder with BiomedCLIP's files (empty: Hugging Face cache)
    frames_per_cine: int = 4  # frames sampled evenly from each multi-frame instance
    study_aggregation: Literal["max", "top3-mean", "mean"] = "max"  # image scores to a study score
    threshold: float = -1.0  # study verdict threshold; negative: the bundle's own
    device: str = "cpu"  # torch device
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"  # backbone forward; auto: bf16 where the CPU (AVX512-BF16/AMX) or GPU has it, else fp32; fp16 only on CUDA
    threads: int = 0  # torch intra-op threads; 0: one core less than this process may use (at least 1)
    mask_annotations: bool = True  # fill burned-in text, callipers and colour overlays before embedding
    min_shots: int = 1  # fewest examples per given class that `sonoshot fit` accepts
    prompt_organs: tuple[str, ...] = ()  # organ prompt sets beside the general one; empty: all organs


@dataclass(frozen=True)
class ReportConfig:
    not_analysed: bool = True  # send a "not analysed" SR when a study ends out of scope, quarantined or failed
    key_image: bool = True  # send a Secondary Capture key image (map, regions, score) with each scored SR
    max_regions: int = 3  # anomalous regions per flagged frame in the SR and key image (largest first); 0: none


@dataclass(frozen=True)
class RoutingRule:
    name: str = ""  # shown in logs, the database and `sonoshot route`
    action: Literal["process", "ignore"] = "process"
    match: dict[str, str] = field(default_factory=dict)  # DICOM keyword or calling_ae/called_ae -> value


@dataclass(frozen=True)
class RoutingConfig:
    rules: tuple[RoutingRule, ...] = (
        RoutingRule(name="ultrasound", action="process", match={"Modality": "US"}),
        RoutingRule(name="everything-else", action="ignore", match={}),
    )


@dataclass(frozen=True)
class Destination:
    name: str = ""  # label in the database and logs
    ae_title: str = ""  # called AE title of the PACS
    host: str = ""
    port: int = 104
    calling_ae_title: str = ""  # our AE title towards this PACS; empty: network.ae_title
    mode: Literal["", "send", "shadow"] = ""  # send or shadow for this destination; empty: delivery.mode
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass(frozen=True)
class DeliveryConfig:
    destinations: tuple[Destination, ...] = ()  # where SRs go; empty: results stay in the database
    mode: Literal["send", "shadow"] = "send"  # shadow: build and keep every SR, send none until released
    max_attempts: int = 12  # then the outbox entry becomes dead-letter
    backoff_initial_s: float = 5.0  # first retry delay, doubled each attempt
    backoff_max_s: float = 900.0  # cap on the retry delay
    sweep_interval_s: float = 2.0  # how often the outbox is polled for retries (a new result is sent at once)

    def mode_of(self, destination: Destination) -> str:
        """``send`` or ``shadow`` for ``destination``: its own ``mode``, else this section's."""
        return destination.mode or self.mode


@dataclass(frozen=True)
class WorkersConfig:
    count: int = 1  # studies processed at once (de-identify, detect, report)
    batch_wait_s: float = 0.05  # with count > 1: how long a study waits at the detector for others to share its batches


@dataclass(frozen=True)
class ObjectsConfig:
    store: Literal["spool", "folder", "s3"] = "spool"  # spool: this machine's folders; folder: a shared mount; s3
    folder: str = ""  # store = "folder": the shared mount (originals/, work/ and reports/ below it)
    endpoint_url: str = ""  # store = "s3": the S3 endpoint, e.g. https://s3.example.org
    region: str = "us-east-1"  # store = "s3": the region the endpoint expects in signatures
    bucket_prefix: str = "sonoshot"  # buckets <prefix>-originals, <prefix>-work and <prefix>-reports
    access_key_id: str = ""  # this role's key (receivers, workers and deliverers each have their own)
    secret_access_key_file: str = ""  # file holding that key's secret (mode 0600)
    server_side_encryption: str = ""  # e.g. "AES256": asked on every put; empty: the server's own (Swift)
    verify_tls: bool = True  # check the endpoint's certificate
    upload_retry_max_s: float = 30.0  # receivers: longest pause between upload tries while the store is down


@dataclass(frozen=True)
class ClusterConfig:
    enabled: bool = False  # true: roles on many machines, work carried by procrastinate on PostgreSQL
    node_name: str = ""  # this process in the database; empty: <hostname>:<network.port>
    stall_timeout_s: float = 30.0  # a worker without a heartbeat this long is stalled: its jobs are taken over
    heartbeat_interval_s: float = 5.0  # how often a worker tells the database it is alive
    poll_interval_s: float = 2.0  # a worker's fallback poll when no job notification arrives
    keep_finished_jobs_h: int = 24  # finished jobs stay in procrastinate's table this long


@dataclass(frozen=True)
class HttpConfig:
    enabled: bool = True
    bind_address: str = "127.0.0.1"  # /livez, /readyz (/healthz) and /metrics
    port: int = 9110
    echo_interval_s: float = 60.0  # C-ECHO each delivery destination this often for /readyz


@dataclass(frozen=True)
class ConsoleTLSConfig:
    certificate: str = ""  # PEM certificate of the console; empty: plain HTTP (keep it on 127.0.0.1)
    private_key: str = ""  # PEM private key for `certificate`


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool = False  # serve the web console (users: `sonoshot users add NAME --role ROLE`)
    bind_address: str = "127.0.0.1"  # console listen address
    port: int = 9120  # console HTTP(S) port
    secret_key_file: Path = Path("var/console.key")  # session signing secret, created (0600) when missing
    session_minutes: int = 30  # a login lasts this long without activity
    max_failed_logins: int = 5  # failed logins of one user within 15 minutes before it is locked for 15
    tls: ConsoleTLSConfig = field(default_factory=ConsoleTLSConfig)


@dataclass(frozen=True)
class ValidationConfig:
    target_sensitivity: float = 0.9  # `sonoshot performance` reports the threshold that reaches it
    bootstrap_resamples: int = 2000  # resamples for the AUROC 95 % interval
    drift_interval_s: float = 900.0  # how often the daemon recomputes scanner drift (gauges, events)
    drift_days: float = 7.0  # drift window: the scanner's instances of the last this many days
    drift_min_instances: int = 20  # fewer scored instances in the window: no drift verdict
    drift_alpha: float = 0.001  # KS p-value below which a distribution counts as changed
    psi_alert: float = 0.25  # score PSI at or above which the score shift is material
    image_shift_alert: float = 0.1  # relative median change of brightness or size that is material
    quarantine_alert: float = 0.2  # share of a scanner's instances quarantined that raises the flag


@dataclass(frozen=True)
class LoggingConfig:
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json: bool = False  # JSON lines instead of plain text


@dataclass(frozen=True)
class RetentionConfig:
    spool_days: float = 30.0  # delete received files this long after the result is delivered
    work_days: float = 1.0  # delete de-identified copies this long after delivery


@dataclass(frozen=True)
class Config:
    network: NetworkConfig = field(default_factory=NetworkConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    deid: DeidConfig = field(default_factory=DeidConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    routing: RoutingConfig = field(default_factory=RoutingConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    workers: WorkersConfig = field(default_factory=WorkersConfig)
    objects: ObjectsConfig = field(default_factory=ObjectsConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)


_RANGES: dict[str, tuple[float, float]] = {
    "network.port": (1, 65535),
    "network.max_associations": (1, 1000),
    "network.request_timeout_s": (0.1, 600),
    "network.max_pending_per_address": (1, 10000),
    "network.max_pending": (1, 10000),
    "network.max_pdu_size": (0, 2**32 - 1),
    "network.stream_above_mb": (1, 4096),
    "http.echo_interval_s": (1, 86400),
    "http.port": (1, 65535),
    "delivery.destinations.port": (1, 65535),
    "storage.min_free_mb": (0, 10**9),
    "completion.quiet_period_s": (0, 86400),
    "completion.max_wait_s": (0, 7 * 86400),
    "completion.sweep_interval_s": (0.05, 3600),
    "delivery.max_attempts": (1, 10**6),
    "delivery.sweep_interval_s": (0.05, 3600),
    "workers.count": (1, 64),
    "workers.batch_wait_s": (0, 10),
    "deid.ocr_max_frames": (1, 10**6),
    "deid.ocr_min_score": (50, 100),
    "deid.text_detection_frames": (1, 1000),
    "deid.text_detector_threads": (0, 64),
    "detector.frames_per_cine": (1, 1000),
    "objects.upload_retry_max_s": (0.1, 3600),
    "cluster.stall_timeout_s": (1, 86400),
    "cluster.heartbeat_interval_s": (0.1, 3600),
    "cluster.poll_interval_s": (0.1, 3600),
    "cluster.keep_finished_jobs_h": (1, 24 * 365),
    "detector.threads": (0, 1024),
    "console.port": (1, 65535),
    "console.session_minutes": (1, 24 * 60),
    "console.max_failed_logins": (1, 1000),
    "validation.target_sensitivity": (0.01, 1.0),
    "validation.bootstrap_resamples": (100, 10**6),
    "validation.drift_interval_s": (1, 7 * 86400),
    "validation.drift_days": (0.01, 366),
    "validation.drift_min_instances": (2, 10**6),
    "validation.drift_alpha": (1e-12, 0.5),
    "validation.psi_alert": (0.0, 100.0),
    "validation.image_shift_alert": (0.0, 100.0),
    "validation.quarantine_alert": (0.0, 1.0),
    "report.max_regions": (0, 20),
}


def _describe(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a table of strings"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
            Path: "a path string"}.get(tp, str(tp))


def _convert(key: str, tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a table, got {value!r}")
        return _build(tp, value, key)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(key, f"expected {_describe(tp)}, got {value!r}")
        return value
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(key, f"expected {_describe(tp)}, got {value!r}")
        return tuple(_convert(key, inner, v) for v in value)
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise ConfigError(key, f"expected a table of strings, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            tp is int and not isinstance(value, int)
        ):
            raise ConfigError(key, f"expected {_describe(tp)}, got {value!r}")
        bounds = _RANGES.get(key)
        if bounds and not bounds[0] <= value <= bounds[1]:
            raise ConfigError(key, f"expected a value from {bounds[0]} to {bounds[1]}, got {value!r}")
        return tp(value)
    if tp in (str, Path):
        if not isinstance(value, str):
            raise ConfigError(key, f"expected {_describe(tp)}, got {value!r}")
        return tp(value)
    raise ConfigError(key, f"unsupported type {tp}")  # pragma: no cover - a programming error


def _build(cls: type, table: dict[str, Any], prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in table.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in names:
            raise ConfigError(dotted, f"unknown key; expected one of: {', '.join(sorted(names))}")
        kwargs[key] = _convert(dotted, hints[key], value)
    return cls(**kwargs)


def _check(config: Config) -> None:
    if 0 < config.network.max_pdu_size < 4096:
        raise ConfigError("network.max_pdu_size", f"expected 0 (unlimited) or at least 4096, got "
                                                  f"{config.network.max_pdu_size}")
    if config.network.max_pending < config.network.max_pending_per_address:
        raise ConfigError("network.max_pending", "expected at least network.max_pending_per_address")
    if config.network.tls.enabled and not config.network.tls.private_key:
        raise ConfigError("network.tls.private_key", "required when network.tls.certificate is set")
    for i, dest in enumerate(config.delivery.destinations):
        for name in ("name", "ae_title", "host"):
            if not getattr(dest, name):
                raise ConfigError(f"delivery.destinations[{i}].{name}", "expected a non-empty string")
    if len({d.name for d in config.delivery.destinations}) != len(config.delivery.destinations):
        raise ConfigError("delivery.destinations.name", "names must be unique")
    cluster = config.cluster
    if cluster.enabled:
        if not config.database.url.startswith("postgresql"):
            raise ConfigError("cluster.enabled", "needs a PostgreSQL database.url (postgresql+psycopg://...)")
        if config.objects.store == "spool":
            raise ConfigError("objects.store", "cluster mode needs a store every node reaches: 'folder' or 's3'")
        if cluster.heartbeat_interval_s >= cluster.stall_timeout_s:
            raise ConfigError("cluster.heartbeat_interval_s", "must be shorter than cluster.stall_timeout_s")
    if config.detector.precision == "fp16" and not config.detector.device.startswith("cuda"):
        raise ConfigError("detector.precision", f"fp16 needs a CUDA detector.device, not "
                          f"{config.detector.device!r}; use auto, fp32 or bf16")
    if config.console.tls.certificate and not config.console.tls.private_key:
        raise ConfigError("console.tls.private_key", "required when console.tls.certificate is set")
    for title_key, title in (("network.ae_title", config.network.ae_title),):
        if not 0 < len(title) <= 16 or "\\" in title:
            raise ConfigError(title_key, f"expected 1 to 16 characters without backslash, got {title!r}")


def parse_config(table: dict[str, Any]) -> Config:
    """Build a validated :class:`Config` from a parsed TOML table.

    Raises
    ------
    ConfigError
        Naming the first key that is unknown or holds a value of the wrong type or range.
    """
    config = _build(Config, table)
    _check(config)
    return config


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load the configuration from ``path``, ``$SONOSHOT_CONFIG``, or the embedded defaults.

    Raises
    ------
    ConfigError
        If the file cannot be read or parsed, or a key is invalid.
    """
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        return parse_config({})
    try:
        with open(path, "rb") as f:
            table = tomllib.load(f)
    except OSError as exc:
        raise ConfigError("--config", f"cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("--config", f"{path} is not valid TOML: {exc}") from exc
    return parse_config(table)

