"""The job file: TOML turned into validated, immutable configuration.

`load_job` reads the job file and `build_job` validates a raw tree (the file's, or one that
`batchrun.map` builds in Python) into a `Job`: the only place that reads the environment (the
key variable, `OPENAI_BASE_URL` and the proxy and certificate variables, from the mapping it
is handed); everything below receives a `Job`.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ..core.network import DIRECT as DIRECT_ROUTE
from ..core.network import ProxyURL, Route, pem_problem, route_for
from ..core.secrets import Secret
from ..errors import JobError
from ..storage.store import S3_SCHEME, Remote, S3Spec, stage_input
from .presets import PRESETS, Preset

SIM = "sim"
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DEFAULT_ENDPOINT = "default"  # the name of the one endpoint of a job with `[endpoint]`
DEFAULT_BASE_URL = "https://api.openai.com/v1"
# The Batch API's limits on one input file (OpenAI's; a gateway's may be lower).
BATCH_MAX_ROWS = 50_000
BATCH_MAX_BYTES = 200_000_000
# A completion window in hours ("24h"): OpenAI takes only "24h"; some gateways take longer.
_WINDOW = re.compile(r"([1-9][0-9]*)h")
MIN_WINDOW_HOURS = 24
# An endpoint's keys that only a batch endpoint takes.
BATCH_SETTINGS = frozenset(
    (
        "batch_price_factor",
        "batch_rows",
        "batch_bytes",
        "batch_enqueued_tokens",
        "completion_window",
        "poll_s",
    )
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class InputSpec(_Section):
    """`[input]`: where the rows are, and how their text is read."""

    path: str
    id_column: str | None = None
    encoding: str = "utf-8"  # a CSV's: any codec Python knows ("gb18030", "utf-16", ...)
    separator: str | None = None  # a CSV's field separator; None: "," (a tab for .tsv, .txt)
    sheet: str | None = None  # an .xlsx workbook's sheet; None: the first

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, encoding: str) -> str:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise ValueError(
                f'must be an encoding Python knows, such as "utf-8", "gb18030", "gbk" or '
                f'"utf-16" (got {encoding!r})'
            ) from None
        return encoding

    @field_validator("separator")
    @classmethod
    def _one_character(cls, sep: str | None) -> str | None:
        if sep is not None and (len(sep) != 1 or not sep.isascii() or sep in '"\r\n'):
            raise ValueError(
                f"must be one ASCII character other than a quote or a line end, such as "
                f'"," or "\\t" (got {sep!r})'
            )
        return sep


class PromptSpec(_Section):
    system: str | None = None
    user: str | None = None
    messages_column: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> PromptSpec:
        if self.messages_column is not None and (self.user is not None or self.system):
            raise ValueError("give either messages_column or system/user templates, not both")
        if self.messages_column is None and self.user is None:
            raise ValueError("needs a user template (user = ...) or a messages_column")
        return self


class EndpointSpec(_Section):
    """`[endpoint]`, or one entry of `[[endpoints]]` (which must have a name). An entry's
    own limits and simulator default to `[limits]`' and `[sim]`."""

    name: str | None = None
    preset: str | None = None
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    headers: dict[str, str] = Field(default_factory=dict)
    price_as: dict[str, str] | None = None
    non_stream_price_factor: float | None = Field(None, gt=0)
    model: str | None = Field(None, min_length=1)  # this gateway's name for the job's model
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    concurrency: int | None = Field(None, ge=1, le=100_000)
    sim: dict[str, Any] | None = None  # with base_url = "sim": this simulator's settings
    # None: the proxy variables (HTTPS_PROXY...) decide; "": direct; else this proxy's URL
    proxy: str | None = None
    # The NAME of a variable holding this endpoint's proxy URL, where it has a password
    # (a password is read from the environment, never the job file)
    proxy_env: str | None = None
    ca_bundle: str | None = None  # a PEM file of CAs trusted besides the system's
    # "batch": rows go through the Files and Batches API instead of /chat/completions. The
    # batch settings below are None when not given, so that a direct endpoint's are refused.
    kind: Literal["direct", "batch"] = "direct"
    batch_price_factor: float | None = Field(None, gt=0)
    batch_rows: int | None = Field(None, ge=1, le=BATCH_MAX_ROWS)
    batch_bytes: int | None = Field(None, gt=0, le=BATCH_MAX_BYTES)
    batch_enqueued_tokens: int | None = Field(None, ge=1)
    completion_window: str | None = None
    poll_s: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _batch_settings(self) -> EndpointSpec:
        if self.kind == "direct":
            given = sorted(set(self.model_fields_set) & BATCH_SETTINGS)
            if given:
                raise ValueError(
                    f'{given[0]} is a batch endpoint\'s setting: add kind = "batch" to this '
                    f"endpoint, or remove it"
                )
        window = self.completion_window
        if window is not None:
            hours = _WINDOW.fullmatch(window)
            if hours is None or int(hours.group(1)) < MIN_WINDOW_HOURS:
                raise ValueError(
                    f'completion_window must be a number of hours the API takes, "24h" or '
                    f'more (OpenAI takes only "24h"; got {window!r})'
                )
        return self

    @model_validator(mode="after")
    def _known_preset(self) -> EndpointSpec:
        if self.name is not None and not _NAME.fullmatch(self.name):
            raise ValueError(
                f"name must be letters, digits, '.', '_' or '-' (got {self.name!r}): it "
                f"names the endpoint in the output, the report and file names"
            )
        if not _VARIABLE.fullmatch(self.api_key_env):
            # Never repeat the value: it is often the key itself, put in the wrong place.
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (letters, digits "
                "and _, like OPENAI_API_KEY) that holds the key, never the key itself"
            )
        if self.preset is not None and self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {', '.join(PRESETS)} (got {self.preset!r})")
        if self.proxy:
            try:
                url = ProxyURL.parse(self.proxy)
            except ValueError as exc:  # its message never repeats the URL: it may hold a password
                raise ValueError(f'proxy {exc}, or "" for none') from None
            if url.has_password:
                raise ValueError(
                    "proxy holds a password, which never goes into a job file: put the "
                    "proxy's URL in an environment variable and give its name as proxy_env "
                    '(as api_key_env names the key\'s), e.g. proxy_env = "CORP_PROXY"'
                )
        if self.proxy_env is not None:
            if self.proxy is not None:
                raise ValueError("give proxy or proxy_env, not both")
            if not _VARIABLE.fullmatch(self.proxy_env):
                raise ValueError(
                    "proxy_env must be the NAME of an environment variable (letters, digits "
                    "and _) that holds the proxy's URL, never the URL itself"
                )
        return self


class LimitsSpec(_Section):
    """The job's `[limits]` section: how fast, how many at once and how often a run may ask
    (paced by `batchrun.engine.pacing`), and how long it waits out storage."""

    requests_per_minute: float = Field(600, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    concurrency: int = Field(64, ge=1, le=100_000)
    max_attempts: int = Field(6, ge=1, le=100)
    request_timeout_s: float = Field(120, gt=0)
    idle_timeout_s: float = Field(60, gt=0)
    quota_wait_s: float = Field(600, ge=0)
    max_retry_s: float = Field(900, gt=0)
    commit_interval_s: float = Field(0.5, gt=0)
    disk_wait_s: float = Field(300, ge=0)  # how long to wait for space on a full disk
    storage_wait_s: float = Field(300, ge=0)  # how long S3 may stay out of reach
    # With a batch endpoint: what it has not answered within this many seconds goes direct.
    deadline_s: float | None = Field(None, gt=0)


class EngineSpec(_Section):
    kind: Literal["local", "ray"] = "local"
    workers: int = Field(2, ge=1, le=1024)  # actors running shards of the input (ray)
    address: str | None = None  # a running cluster ("auto", "ray://..."); None: start one here
    worker_cpus: float = Field(0.25, gt=0, le=64)  # CPUs Ray reserves for each worker actor
    shard_rows: int | None = Field(None, ge=1)  # rows a worker takes at once; None: a few each


class OutputSpec(_Section):
    path: str


class StorageSpec(_Section):
    """How S3 locations are reached (see `batchrun.storage.store.S3Spec`), and where their local
    copies go."""

    region: str | None = None  # None: AWS_REGION
    endpoint_url: str | None = None  # None: AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL, or AWS
    access_key_id_env: str = "AWS_ACCESS_KEY_ID"  # the variable holding the key id
    secret_access_key_env: str = "AWS_SECRET_ACCESS_KEY"
    session_token_env: str = "AWS_SESSION_TOKEN"
    cache: str | None = None  # local copies of S3 files; None: $BATCHRUN_CACHE, ~/.cache/batchrun
    # A run's lease on an S3 checkpoint lapses this long after it was last renewed (every
    # quarter of it): how long a killed run keeps the next one waiting.
    lease_s: float = Field(60, ge=1, le=3600)


class PriceSpec(_Section):
    input: float = Field(ge=0)  # USD per million input tokens
    output: float = Field(ge=0)  # USD per million output tokens
    cached_input: float | None = Field(None, ge=0)  # USD per million cached input tokens


class CostSpec(_Section):
    budget_usd: float | None = Field(None, gt=0)
    prices: dict[str, PriceSpec] = Field(default_factory=dict)


ParseFormat = typing.Literal["label", "json", "regex"]
FieldType = typing.Literal["string", "int", "float", "bool", "json"]
ScorerName = typing.Literal[
    "exact", "normalized", "contains", "regex", "numeric", "json_field", "label"
]


class ParseSpec(_Section):
    """How an answer is parsed: matched to a label set, read as JSON, or cut by a regex."""

    format: ParseFormat
    labels: list[str] | None = None
    pattern: str | None = None
    columns: list[str] = Field(default_factory=list)  # JSON fields expanded into columns
    types: dict[str, FieldType] = Field(default_factory=dict)  # their types, without a schema
    retry_invalid: int = Field(0, ge=0, le=10)

    @model_validator(mode="after")
    def _fits_format(self) -> ParseSpec:
        if self.format == "label" and not self.labels:
            raise ValueError('format = "label" needs labels = ["...", ...]')
        if self.format == "regex" and not self.pattern:
            raise ValueError('format = "regex" needs pattern = "..."')
        if self.format != "label" and self.labels:
            raise ValueError('labels only go with format = "label"')
        if self.format != "regex" and self.pattern:
            raise ValueError('pattern only goes with format = "regex"')
        if self.format != "json" and (self.columns or self.types):
            raise ValueError('columns and types only go with format = "json"')
        unknown = sorted(set(self.types) - set(self.columns))
        if unknown:
            raise ValueError(f"types names {unknown[0]!r}, which is not in columns")
        return self


class EvalSpec(_Section):
    """How an answer is scored against the input's gold column."""

    expected_column: str
    scorer: ScorerName = "exact"
    tolerance: float = Field(0.0, ge=0)  # numeric (and numeric json_field) answers
    field: str | None = None  # the parsed JSON field the json_field scorer compares
    group_by: list[str] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _one_group(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("group_by"), str):
            return {**data, "group_by": [data["group_by"]]}
        return data

    @model_validator(mode="after")
    def _fits_scorer(self) -> EvalSpec:
        if self.scorer == "json_field" and not self.field:
            raise ValueError('scorer = "json_field" needs field = "..."')
        if self.scorer != "json_field" and self.field:
            raise ValueError('field only goes with scorer = "json_field"')
        return self


class _JobModel(_Section):
    name: str | None = None
    input: InputSpec
    prompt: PromptSpec
    request: dict[str, Any]
    endpoint: EndpointSpec = EndpointSpec()
    endpoints: list[EndpointSpec] | None = Field(None, min_length=1)
    strategy: Literal["priority", "spread"] = "priority"
    limits: LimitsSpec = LimitsSpec()
    output: OutputSpec
    cost: CostSpec = CostSpec()
    parse: ParseSpec | None = None
    eval: EvalSpec | None = None
    sim: dict[str, Any] = Field(default_factory=dict)
    engine: EngineSpec = EngineSpec()
    storage: StorageSpec = StorageSpec()

    @model_validator(mode="after")
    def _has_model(self) -> _JobModel:
        if not isinstance(self.request.get("model"), str) or not self.request["model"]:
            raise ValueError('[request] needs model = "..."')
        if "messages" in self.request:
            raise ValueError("[request] must not hold messages: they come from [prompt]")
        if self.endpoints is not None:
            if "endpoint" in self.model_fields_set:
                raise ValueError(
                    "give either [endpoint] or [[endpoints]], not both: one endpoint is a "
                    "list of one"
                )
            seen: set[str] = set()
            for number, entry in enumerate(self.endpoints, start=1):
                if entry.name is None:
                    raise ValueError(f'[[endpoints]] entry {number} needs name = "..."')
                if entry.name in seen:
                    raise ValueError(
                        f"two [[endpoints]] entries are named {entry.name!r}: give each its "
                        f"own name"
                    )
                seen.add(entry.name)
        elif self.endpoint.sim is not None:
            raise ValueError("[endpoint] takes no sim table: give the simulator's in [sim]")
        self._one_batch_lane()
        if self.eval is not None:
            needs = {"label": "label", "json_field": "json"}.get(self.eval.scorer)
            if needs and (self.parse is None or self.parse.format != needs):
                raise ValueError(
                    f'[eval] scorer = "{self.eval.scorer}" needs [parse] format = "{needs}"'
                )
        return self

    def _one_batch_lane(self) -> None:
        """At most one batch endpoint, in a local run with a local checkpoint; a deadline
        only beside one."""
        batch = [e for e in self.endpoints or [self.endpoint] if e.kind == "batch"]
        if len(batch) > 1:
            raise ValueError(
                f'{len(batch)} endpoints have kind = "batch", and a job takes one: the batch '
                f"lane keeps one ledger of its files and batches in the checkpoint, under "
                f"one key space; make the others direct"
            )
        if batch and self.engine.kind == "ray":
            raise ValueError(
                'an endpoint with kind = "batch" needs [engine] kind = "local": the batch '
                "lane runs in one process, which submits, polls and collects its batches"
            )
        if batch and self.output.path.startswith(S3_SCHEME):
            raise ValueError(
                'an endpoint with kind = "batch" needs a local [output] path: the batch '
                "lane's ledger of files and batches stays in this machine's copy of the "
                "checkpoint and does not follow it to S3, so a run elsewhere could submit "
                "the same rows again"
            )
        if self.limits.deadline_s is not None and not batch:
            raise ValueError(
                '[limits] deadline_s goes with an endpoint of kind = "batch" (what it has '
                "not answered by then goes direct): add one, or remove deadline_s"
            )


@dataclass(frozen=True)
class Endpoint:
    """One gateway (or one key at a gateway) a job sends to, every default filled in: the
    job's `[endpoint]`, or one entry of its `[[endpoints]]`. Plain dicts, never changed, so
    that a job pickles to Ray's workers."""

    name: str
    base_url: str  # without a trailing slash; "sim": a simulator started for the run
    api_key_env: str
    headers: dict[str, str]  # the preset's, then the entry's own
    price_as: dict[str, str]  # model patterns billed as another model
    non_stream_price_factor: float  # non-streaming requests cost this much of the list price
    requests_per_minute: float
    tokens_per_minute: float | None
    concurrency: int
    model: str | None  # the name this gateway has for the job's model; None: the job's own
    sim: dict[str, Any]  # the simulator's settings, where base_url is "sim"
    # The job's proxy setting (None: the variables decide; "": direct); never a password
    proxy: str | None = None
    proxy_env: str | None = None  # the variable holding this endpoint's proxy URL instead
    ca_bundle: str | None = None  # the CA file's absolute path, for messages
    ca_pem: str | None = dataclasses.field(default=None, repr=False)  # its certificates
    # "direct": /chat/completions; "batch": the Files and Batches API, with the settings below
    kind: str = "direct"
    batch_price_factor: float = 0.5  # a batch answer costs this much of the list price
    batch_rows: int = BATCH_MAX_ROWS  # request lines in one uploaded file at most
    batch_bytes: int = BATCH_MAX_BYTES  # bytes of one uploaded file at most
    batch_enqueued_tokens: int | None = None  # prompt + max_tokens enqueued at once; None: no cap
    completion_window: str = "24h"  # the window each batch is created with
    poll_s: float = 30.0  # seconds between two looks at a batch in flight

    @property
    def uses_sim(self) -> bool:
        return self.base_url == SIM

    @property
    def is_batch(self) -> bool:
        """Whether rows go through this endpoint's Files and Batches API."""
        return self.kind == "batch"

    def route(self, environ: Mapping[str, str]) -> Route:
        """How this endpoint's connections are made, from its own settings and the proxy and
        certificate variables in `environ`; a simulator started for the run is always
        reached directly."""
        if self.uses_sim:
            return DIRECT_ROUTE
        setting = self.proxy
        if self.proxy_env is not None:
            setting = environ.get(self.proxy_env, "").strip()
            if not setting:
                raise JobError(
                    f"The variable {self.proxy_env}, which endpoint {self.name!r} names as "
                    f"proxy_env, is not set: set it to the proxy's URL (e.g. "
                    f"http://user:password@proxy:3128), or remove proxy_env."
                )
            try:
                ProxyURL.parse(setting)
            except ValueError as exc:  # never the value: it holds a password
                raise JobError(
                    f"The variable {self.proxy_env} (endpoint {self.name!r}'s proxy_env) "
                    f"{exc}; fix it."
                ) from None
        return route_for(self.base_url, setting, self.ca_pem, environ)

    def api_key(self, environ: Mapping[str, str]) -> Secret | None:
        """The key from the variable the endpoint names; required unless a simulator serves."""
        value = environ.get(self.api_key_env, "").strip()
        if value:
            return Secret(value)
        if self.uses_sim:
            return None
        raise JobError(
            f"The variable {self.api_key_env} is not set: export your API key in it "
            f"(or name another variable with endpoint.api_key_env)."
            if self.name == DEFAULT_ENDPOINT
            else f"The variable {self.api_key_env} of endpoint {self.name!r} is not set: "
            f"export its API key in it, or remove the endpoint from [[endpoints]]."
        )


@dataclass(frozen=True)
class Job:
    """A validated job: its input and output paths absolute, every default filled in."""

    path: Path  # the job file as the user named it (messages name it), or "batchrun.map"
    name: str
    input: InputSpec
    prompt: PromptSpec
    request: Mapping[str, Any]
    limits: LimitsSpec
    output: OutputSpec
    cost: CostSpec
    parse: ParseSpec | None
    eval: EvalSpec | None
    input_path: str
    output_path: Path
    engine: EngineSpec = dataclasses.field(default_factory=EngineSpec)
    storage: StorageSpec = dataclasses.field(default_factory=StorageSpec)
    output_url: str | None = None  # an s3:// output; `output_path` is then its local copy
    cache: Path = Path()  # where local copies of S3 files go
    # Where the requests go: `[endpoint]` as a list of one, or `[[endpoints]]` in order.
    endpoints: tuple[Endpoint, ...] = ()
    strategy: str = "priority"  # how requests are shared among several endpoints
    pooled: bool = False  # the job has [[endpoints]]: its output names each row's endpoint

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as plain dicts (a mappingproxy does not pickle): Ray sends jobs to its
        workers so. A job holds no key, only the name of the variable that has it."""
        fields = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            fields[f.name] = dict(value) if isinstance(value, types.MappingProxyType) else value
        return (_unpickle_job, (fields,))

    @property
    def s3(self) -> S3Spec:
        return S3Spec(**self.storage.model_dump(exclude={"cache"}))

    @property
    def output_remote(self) -> Remote | None:
        """The output on S3, or None for a local output."""
        return Remote.of_url(self.output_url, self.s3) if self.output_url else None

    @property
    def checkpoint_remote(self) -> Remote | None:
        """The checkpoint on S3 (beside an S3 output), or None for a local one."""
        remote = self.output_remote
        return remote.sibling(".checkpoint") if remote is not None else None

    def local_input(self) -> str:
        """The input as local files: the path as given, or an S3 input's copy in the cache,
        downloaded where it is new or changed."""
        if not self.input_path.startswith(S3_SCHEME):
            return self.input_path
        return str(stage_input(Remote.of_url(self.input_path, self.s3), self.cache))

    @property
    def batch_endpoint(self) -> Endpoint | None:
        """The endpoint served through its Batch API (a job has one at most), or None."""
        return next((e for e in self.endpoints if e.is_batch), None)

    @property
    def direct_endpoints(self) -> tuple[Endpoint, ...]:
        """The endpoints requests are sent to one by one: the direct engine's lanes."""
        return tuple(e for e in self.endpoints if not e.is_batch)

    @property
    def uses_sim(self) -> bool:
        """Whether a simulator started for the run serves (every endpoint's, or some)."""
        return any(e.uses_sim for e in self.endpoints)

    def keys(self, environ: Mapping[str, str]) -> dict[str, Secret | None]:
        """Every endpoint's key by name, from the variables they name; a JobError for the
        first one that is not set (a simulator needs none). Checked before any request."""
        return {e.name: e.api_key(environ) for e in self.endpoints}

    def routes(self, environ: Mapping[str, str]) -> dict[str, Route]:
        """Every endpoint's route by name (see `Endpoint.route`); a UserError naming the
        variable that cannot be used. Checked before any request, like the keys."""
        return {e.name: e.route(environ) for e in self.endpoints}

    def endpoint_named(self, name: str | None) -> Endpoint:
        """The endpoint called `name` (None: the first); a JobError naming the others."""
        if name is None:
            return self.endpoints[0]
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        known = ", ".join(e.name for e in self.endpoints)
        raise JobError(f"The job has no endpoint named {name!r}: name one of {known}.")

    def model_at(self, endpoint: Endpoint) -> str:
        """The model name requests carry at `endpoint`."""
        return endpoint.model or str(self.request["model"])


def load_job(
    path: str | Path,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
    *,
    values: Mapping[str, Any] | None = None,
) -> Job:
    """Read a job file, apply `--set` overrides, then typed `values`, and validate it.

    `overrides` are `section.key=value` texts, typed like the file's value (the command
    line's `--set`); `values` map dotted keys to Python values (`{"limits.concurrency": 8}`).
    """
    job_path = Path(path)
    raw = _read_toml(job_path)
    for override in overrides:
        _apply_override(raw, override, job_path)
    for dotted, value in (values or {}).items():
        set_key(raw, dotted, value, job_path)
    return build_job(raw, job_path.resolve().parent, path=job_path, environ=environ)


def build_job(
    raw: Mapping[str, Any],
    base: Path,
    *,
    path: Path,
    environ: Mapping[str, str] | None = None,
) -> Job:
    """Validate a raw job tree (the TOML file's, or one built in Python) into a `Job`.

    Relative paths in it resolve against `base`. `path` is the job file as the user named
    it, or what stands for it (`batchrun.map`): messages name it, and the job's default name
    is its stem. `environ` gives `OPENAI_BASE_URL` when the job names no base URL.
    """
    environ = {} if environ is None else environ
    try:
        model = _JobModel.model_validate(raw)
    except ValidationError as exc:
        raise JobError(_describe(exc, path)) from None
    base = base.resolve()
    specs = model.endpoints or [model.endpoint.model_copy(update={"name": DEFAULT_ENDPOINT})]
    endpoints = tuple(_resolve(spec, model, environ, base, path) for spec in specs)
    cache = _cache(base, model.storage.cache, environ)
    input_path = _location(base, model.input.path)
    output_path = _local_output(base, model.output.path, cache)
    output_url = model.output.path if model.output.path.startswith(S3_SCHEME) else None
    _apart(input_path, output_url or str(output_path))
    return Job(
        path=path,
        name=model.name or path.stem,
        input=model.input,
        prompt=model.prompt,
        request=types.MappingProxyType(dict(model.request)),
        limits=model.limits,
        output=model.output,
        cost=model.cost,
        parse=model.parse,
        eval=model.eval,
        input_path=input_path,
        output_path=output_path,
        output_url=output_url,
        storage=model.storage,
        cache=cache,
        engine=model.engine,
        endpoints=endpoints,
        strategy=model.strategy,
        pooled=model.endpoints is not None,
    )


def _resolve(
    spec: EndpointSpec, model: _JobModel, environ: Mapping[str, str], base: Path, path: Path
) -> Endpoint:
    """An endpoint with its preset's and the job's defaults filled in, its CA bundle read."""
    preset = PRESETS[spec.preset] if spec.preset else Preset(DEFAULT_BASE_URL)
    base_url = (
        spec.base_url
        or (preset.base_url if spec.preset else None)
        or environ.get("OPENAI_BASE_URL")
        or DEFAULT_BASE_URL
    )
    limits = model.limits
    assert spec.name is not None
    return Endpoint(
        name=spec.name,
        base_url=base_url.rstrip("/"),
        api_key_env=spec.api_key_env,
        headers={**preset.headers, **spec.headers},
        price_as=dict(preset.price_as if spec.price_as is None else spec.price_as),
        non_stream_price_factor=spec.non_stream_price_factor or preset.non_stream_price_factor,
        requests_per_minute=spec.requests_per_minute or limits.requests_per_minute,
        tokens_per_minute=spec.tokens_per_minute or limits.tokens_per_minute,
        concurrency=spec.concurrency or limits.concurrency,
        model=spec.model,
        sim=dict(model.sim if spec.sim is None else spec.sim),
        proxy=spec.proxy,
        proxy_env=spec.proxy_env,
        **_ca_bundle(spec, base, path, model.endpoints is not None),
        **_batch_settings(spec),
    )


def _batch_settings(spec: EndpointSpec) -> dict[str, Any]:
    """The endpoint's kind and the batch settings it gives (the rest keep `Endpoint`'s
    defaults)."""
    given = {key: getattr(spec, key) for key in BATCH_SETTINGS if getattr(spec, key) is not None}
    return {"kind": spec.kind, **given}


def _ca_bundle(spec: EndpointSpec, base: Path, path: Path, pooled: bool) -> dict[str, Any]:
    """The endpoint's ca_bundle as its absolute path and its certificates, read now (so a
    Ray worker on another node has them); a JobError when it is no PEM file."""
    if spec.ca_bundle is None:
        return {}
    where = f"[[endpoints]] {spec.name!r}" if pooled else "[endpoint]"
    bundle = (base / os.path.expanduser(spec.ca_bundle)).resolve()
    problem = pem_problem(str(bundle))
    if problem:
        raise JobError(
            f"{path}: {where} ca_bundle {bundle} {problem}: give the path (relative to the "
            f"job file) of the PEM file of your CA certificates."
        )
    return {
        "ca_bundle": str(bundle),
        "ca_pem": bundle.read_text(encoding="ascii", errors="replace"),
    }


def _location(base: Path, path: str) -> str:
    """An input path made absolute, or an S3 URL as it is."""
    if path.startswith(S3_SCHEME):
        return path
    if "://" in path:
        raise JobError(f"input.path {path!r} is neither a local path nor an s3:// URL.")
    return os.path.normpath(base / path)


def _apart(input_path: str, output: str) -> None:
    """Refuse an output inside the input's folder or prefix: its file and its checkpoint's
    segments would be read as input rows."""
    folder = input_path.rstrip("/")
    if input_path.startswith(S3_SCHEME) == output.startswith(S3_SCHEME) and (
        output.startswith(folder + "/") or output.startswith(folder + os.sep)
    ):
        raise JobError(
            f"output.path {output} is inside the input {input_path}: its file and its "
            f"checkpoint would be read as input; write the output elsewhere."
        )


def _cache(base: Path, cache: str | None, environ: Mapping[str, str]) -> Path:
    """The folder for local copies of S3 files: the job's, $BATCHRUN_CACHE, or the user's
    cache folder."""
    if cache:
        return (base / os.path.expanduser(cache)).resolve()
    return default_cache({**os.environ, **environ})


def default_cache(environ: Mapping[str, str]) -> Path:
    """$BATCHRUN_CACHE, or the user's cache folder."""
    chosen = environ.get("BATCHRUN_CACHE")
    return Path(chosen).expanduser().resolve() if chosen else Path("~/.cache/batchrun").expanduser()


def _local_output(base: Path, path: str, cache: Path) -> Path:
    """Where the output is written: its own path, or, for an S3 URL, its copy in the cache
    (from which it is uploaded whole)."""
    if not path.startswith(S3_SCHEME):
        if "://" in path:
            raise JobError(f"output.path {path!r} is neither a local path nor an s3:// URL.")
        return (base / path).resolve()
    bucket, _, key = path[len(S3_SCHEME) :].partition("/")
    if not bucket or not key.strip("/") or ".." in key.split("/"):
        raise JobError(f"output.path {path!r} names no object: write s3://bucket/key.parquet.")
    return cache / "s3" / bucket / key


def _unpickle_job(fields: dict[str, Any]) -> Job:
    proxied = ("request",)
    values: dict[str, Any] = {
        name: types.MappingProxyType(value) if name in proxied else value
        for name, value in fields.items()
    }
    return Job(**values)


def set_key(raw: dict[str, Any], dotted: str, value: Any, job_path: Path) -> None:
    """Set one dotted key (`limits.concurrency`, `name`) of the raw tree to a Python value."""
    keys = [k.strip() for k in dotted.split(".")]
    if not all(keys):
        raise JobError(f"{job_path}: {dotted!r} is not a job key (e.g. limits.concurrency).")
    _table_of(raw, keys, job_path, f"cannot set {dotted!r}")[keys[-1]] = value


def _read_toml(job_path: Path) -> dict[str, Any]:
    """The job file's raw tree, or a JobError saying why it cannot be had."""
    try:
        return tomllib.loads(job_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise JobError(f"The job file {job_path} does not exist: check the path.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise JobError(f"The job file {job_path} cannot be read ({exc}).") from None
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"The job file {job_path} is not valid TOML: {exc}.") from None


def _apply_override(raw: dict[str, Any], override: str, job_path: Path) -> None:
    """Apply one `section.key=value` to the raw TOML tree, typed like the file's value."""
    dotted, sep, text = override.partition("=")
    keys = [k.strip() for k in dotted.split(".")]
    if not sep or len(keys) < 2 or not all(keys):
        raise JobError(
            f"--set {override!r} is not of the form section.key=value "
            f"(e.g. --set limits.concurrency=8)."
        )
    table = _table_of(raw, keys, job_path, f"--set {override!r}")
    leaf = keys[-1]
    if isinstance(table.get(leaf), str) or _is_text_field(keys):
        table[leaf] = text
    else:
        table[leaf] = _parse_value(text)


def _table_of(raw: dict[str, Any], keys: list[str], job_path: Path, what: str) -> dict[str, Any]:
    """The table that holds the last of `keys`, made where missing."""
    table = raw
    for key in keys[:-1]:
        table = table.setdefault(key, {})
        if not isinstance(table, dict):
            raise JobError(f"{what}: {key} in {job_path} is not a table.")
    return table


def _parse_value(text: str) -> Any:
    """A TOML literal (8, 0.5, true, [..], {..}, "..."), or else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _is_text_field(keys: list[str]) -> bool:
    """Whether the job schema declares this key as text."""
    model: Any = _JobModel
    for key in keys:
        fields = getattr(model, "model_fields", None)
        if not fields or key not in fields:
            return False
        model = fields[key].annotation
    args = set(typing.get_args(model)) if isinstance(model, types.UnionType) else {model}
    return str in args


def _describe(exc: ValidationError, job_path: Path) -> str:
    """One sentence naming the first problem's key and the file."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    where = f"[{loc[0]}] {'.'.join(loc[1:])}" if len(loc) > 1 else (loc[0] if loc else "")
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"{job_path}: unknown key {where}; remove it or check its spelling."
    if kind == "missing":
        return f"{job_path}: missing key {where}; add it to the job file."
    if kind == "value_error":
        message = str(err["msg"]).removeprefix("Value error, ")
        return f"{job_path}: {where + ' ' if where else ''}{message}."
    value = err.get("input")
    shown = repr(value) if not isinstance(value, dict) else "a table"
    if isinstance(value, float) and math.isnan(value):
        shown = "nan"
    return f"{job_path}: {where} {err['msg'][0].lower()}{err['msg'][1:]} (got {shown})."
