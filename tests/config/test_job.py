"""The job file: validation, defaults, overrides, the key and the base URL."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from batchrun.config.job import DEFAULT_BASE_URL, build_job, load_job
from batchrun.errors import JobError

MINIMAL = """
[input]
path = "data/in.csv"
[prompt]
user = "Say {x}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[output]
path = "../out/o.parquet"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "jobs" / "j.toml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_and_paths_relative_to_the_job_file(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, MINIMAL))
    assert job.name == "j"
    assert job.input_path == str(tmp_path / "jobs" / "data" / "in.csv")
    assert job.output_path == (tmp_path / "out" / "o.parquet").resolve()
    assert job.limits.concurrency == 64 and job.limits.max_attempts == 6
    assert job.endpoints[0].base_url == DEFAULT_BASE_URL
    assert dict(job.request) == {"model": "gpt-4o-mini", "max_tokens": 8}


def test_openai_base_url_is_honoured_when_the_job_names_none(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, MINIMAL), environ={"OPENAI_BASE_URL": "http://127.0.0.1:9/v1/"})
    assert job.endpoints[0].base_url == "http://127.0.0.1:9/v1"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ("[limits]\nconcurency = 8\n", "unknown key [limits] concurency"),
        ('[limits]\nconcurrency = "eight"\n', "[limits] concurrency"),
        ("[limits]\nconcurrency = 0\n", "[limits] concurrency"),
        ("colour = 1\n", "unknown key colour"),
        ("[cost]\nbudget_usd = -1\n", "[cost] budget_usd"),
    ],
)
def test_wrong_keys_and_types_name_the_key_and_the_file(
    tmp_path: Path, extra: str, message: str
) -> None:
    text = extra + MINIMAL if not extra.startswith("[") else MINIMAL + extra
    path = write(tmp_path, text)
    with pytest.raises(JobError) as caught:
        load_job(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_missing_section_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(JobError, match=r"missing key output"):
        load_job(write(tmp_path, MINIMAL.replace('[output]\npath = "../out/o.parquet"', "")))
    with pytest.raises(JobError, match="not valid TOML"):
        load_job(write(tmp_path, "[input\n"))
    with pytest.raises(JobError, match="does not exist"):
        load_job(tmp_path / "nope.toml")


def test_overrides_are_typed_like_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    job = load_job(
        path,
        [
            "limits.concurrency=8",
            "request.temperature=0.5",
            "request.model=gpt-4-gizmo-g-B3hgivKK9",
            "prompt.user=Translate {x}",
            'request.stop=["\\n"]',
            "output.path=elsewhere.parquet",
        ],
    )
    assert job.limits.concurrency == 8
    assert job.request["temperature"] == 0.5
    assert job.request["model"] == "gpt-4-gizmo-g-B3hgivKK9"
    assert job.prompt.user == "Translate {x}"
    assert job.request["stop"] == ["\n"]
    assert job.output_path.name == "elsewhere.parquet"


def test_bad_overrides_say_what_to_write(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    with pytest.raises(JobError, match=r"section\.key=value"):
        load_job(path, ["concurrency=8"])
    with pytest.raises(JobError, match=r"\[limits\] concurrency"):
        load_job(path, ["limits.concurrency=lots"])
    with pytest.raises(JobError, match="unknown key"):
        load_job(path, ["limits.speed=3"])


def test_typed_values_override_after_the_text_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    values = {"limits.concurrency": 8, "request.stop": ["\n"], "request.seed": 7, "name": "x"}
    job = load_job(path, ["limits.concurrency=3", "request.seed=1"], values=values)
    assert job.limits.concurrency == 8 and job.request["seed"] == 7 and job.name == "x"
    assert job.request["stop"] == ["\n"]
    with pytest.raises(JobError, match=r"unknown key \[limits\] speed") as caught:
        load_job(path, values={"limits.speed": 3})
    assert str(path) in str(caught.value)
    with pytest.raises(JobError, match=r"\[limits\] concurrency"):
        load_job(path, values={"limits.concurrency": "8"})  # a value is not text to parse
    with pytest.raises(JobError, match=r"model in .* is not a table"):
        load_job(path, values={"request.model.x": 1})
    with pytest.raises(JobError, match="not a job key"):
        load_job(path, values={"limits.": 1})


def test_a_raw_tree_validates_against_the_base_folder(tmp_path: Path) -> None:
    raw = tomllib.loads(MINIMAL)
    job = build_job(raw, tmp_path / "work", path=Path("batchrun.map"))
    assert job.name == "batchrun" and job.path == Path("batchrun.map")
    assert job.input_path == str(tmp_path / "work" / "data" / "in.csv")
    assert job.output_path == (tmp_path / "out" / "o.parquet").resolve()
    with pytest.raises(JobError, match=r"^batchrun.map: unknown key \[limits\] speed"):
        build_job({**raw, "limits": {"speed": 1}}, tmp_path, path=Path("batchrun.map"))


def test_the_key_comes_from_the_named_variable_and_never_shows(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, MINIMAL + '[endpoint]\napi_key_env = "MY_KEY"\n'))
    key = job.endpoints[0].api_key({"MY_KEY": "sk-secret-value-123456"})
    assert key is not None and key.reveal() == "sk-secret-value-123456"
    assert "sk-secret" not in repr(key) and "sk-secret" not in str(key)
    with pytest.raises(JobError, match="MY_KEY is not set"):
        job.endpoints[0].api_key({})


def test_the_simulator_needs_no_key(tmp_path: Path) -> None:
    job = load_job(write(tmp_path, MINIMAL + '[endpoint]\nbase_url = "sim"\n'))
    assert job.uses_sim and job.endpoints[0].api_key({}) is None


def test_prompt_needs_user_or_messages_column_but_not_both(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="user template"):
        load_job(write(tmp_path, MINIMAL.replace('user = "Say {x}"', 'system = "x"')))
    with pytest.raises(JobError, match="either messages_column"):
        load_job(
            write(
                tmp_path, MINIMAL.replace('user = "Say {x}"', 'user = "a"\nmessages_column = "m"')
            )
        )
    with pytest.raises(JobError, match="needs model"):
        load_job(write(tmp_path, MINIMAL.replace('model = "gpt-4o-mini"', "")))


BATCH_AND_DIRECT = """
[[endpoints]]
name = "openai-batch"
kind = "batch"
batch_rows = 1000
batch_enqueued_tokens = 2000000
poll_s = 5
[[endpoints]]
name = "302ai"
preset = "302ai"
[limits]
deadline_s = 21600
"""


def test_a_batch_endpoint_has_every_batch_default_and_a_direct_one_beside_it(
    tmp_path: Path,
) -> None:
    job = load_job(write(tmp_path, MINIMAL + BATCH_AND_DIRECT))
    batch = job.batch_endpoint
    assert batch is not None and batch.name == "openai-batch" and batch.is_batch
    assert (batch.batch_rows, batch.batch_enqueued_tokens, batch.poll_s) == (1000, 2_000_000, 5)
    assert (batch.batch_price_factor, batch.batch_bytes, batch.completion_window) == (
        0.5,
        200_000_000,
        "24h",
    )
    assert [e.name for e in job.direct_endpoints] == ["302ai"]
    assert job.limits.deadline_s == 21600


def test_endpoints_are_direct_by_default_and_a_job_without_batch_has_no_batch_endpoint(
    tmp_path: Path,
) -> None:
    job = load_job(write(tmp_path, MINIMAL))
    assert job.endpoints[0].kind == "direct" and job.batch_endpoint is None
    assert job.direct_endpoints == job.endpoints
    assert job.limits.deadline_s is None


def test_the_batch_endpoint_may_be_the_only_one(tmp_path: Path) -> None:
    job = load_job(
        write(tmp_path, MINIMAL + '[endpoint]\nkind = "batch"\ncompletion_window = "48h"\n')
    )
    assert job.batch_endpoint is job.endpoints[0] and job.direct_endpoints == ()
    assert job.endpoints[0].completion_window == "48h"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            "[endpoint]\nbatch_rows = 10\n",
            'batch_rows is a batch endpoint\'s setting: add kind = "batch"',
        ),
        ("[endpoint]\npoll_s = 10\n", "poll_s is a batch endpoint's setting"),
        ('[endpoint]\nkind = "offline"\n', "[endpoint] kind"),
        ('[endpoint]\nkind = "batch"\nbatch_rows = 50001\n', "[endpoint] batch_rows"),
        ('[endpoint]\nkind = "batch"\nbatch_bytes = 200000001\n', "[endpoint] batch_bytes"),
        ('[endpoint]\nkind = "batch"\nbatch_price_factor = 0\n', "[endpoint] batch_price_factor"),
        ('[endpoint]\nkind = "batch"\nbatch_enqueued_tokens = 0\n', "batch_enqueued_tokens"),
        ('[endpoint]\nkind = "batch"\npoll_s = 0\n', "[endpoint] poll_s"),
        ('[endpoint]\nkind = "batch"\ncompletion_window = "1d"\n', 'OpenAI takes only "24h"'),
        ('[endpoint]\nkind = "batch"\ncompletion_window = "12h"\n', "completion_window must be"),
        ('[endpoint]\nkind = "batch"\n[engine]\nkind = "ray"\n', "runs in one process"),
        ("[limits]\ndeadline_s = 60\n", 'deadline_s goes with an endpoint of kind = "batch"'),
        ('[endpoint]\nkind = "batch"\n[limits]\ndeadline_s = 0\n', "[limits] deadline_s"),
        (
            '[[endpoints]]\nname = "a"\nkind = "batch"\n'
            '[[endpoints]]\nname = "b"\nkind = "batch"\n',
            "a job takes one: the batch lane keeps one ledger",
        ),
    ],
)
def test_batch_settings_are_refused_in_one_sentence(
    tmp_path: Path, extra: str, message: str
) -> None:
    with pytest.raises(JobError) as caught:
        load_job(write(tmp_path, MINIMAL + extra))
    assert message in str(caught.value)
    assert caught.value.exit_code == 2 and str(caught.value).count("\n") == 0


def test_a_batch_endpoint_refuses_a_checkpoint_on_s3(tmp_path: Path) -> None:
    text = MINIMAL.replace('"../out/o.parquet"', '"s3://bucket/o.parquet"')
    with pytest.raises(JobError) as caught:
        load_job(write(tmp_path, text + '[endpoint]\nkind = "batch"\n'))
    assert "does not follow it to S3" in str(caught.value)
    assert caught.value.exit_code == 2 and str(caught.value).count("\n") == 0
