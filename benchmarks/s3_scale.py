"""What the checkpoint on S3 costs a run: the same job with its input, output and checkpoint
on local disk and on S3 (a moto server on loopback), rows per second and peak memory.

    .venv/bin/python benchmarks/s3_scale.py [--rows 20000] [--latency-ms 0] [--quick]

Each run is `python -m batchrun.cli run` in its own process (peak RSS its own, see
`peak.py`) against the embedded simulator; then a status of the S3 job from another cache
(another machine: it pulls the whole checkpoint), and the resume of the S3 job from a third
cache, which must send nothing. moto is a Python server sharing the two cores with the run
and the simulator, so the S3 figures are an upper bound on the overhead of the protocol
(a PUT and a HEAD a commit, a listing and the downloads of a pull), not S3's own speed.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).parent))
from peak import measure

JOB = """
[input]
path = "{input}"
id_column = "id"
[prompt]
system = "Label the review as positive, negative or neutral."
user = "Review: {{text}}"
[request]
model = "gpt-4o-mini"
max_tokens = 8
[endpoint]
base_url = "{url}"
[limits]
requests_per_minute = 10000000
concurrency = 256
[output]
path = "{output}"
[storage]
cache = "{cache}"
"""
BUCKET = "batchrun-bench"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--quick", action="store_true", help="1,000 rows: checks it runs")
    args = parser.parse_args()
    rows = 1_000 if args.quick else args.rows

    import logging

    from moto.server import ThreadedMotoServer

    from batchrun.sim import SimConfig, start_in_thread
    from batchrun.storage.store import Remote, S3Settings, S3Spec, put_whole

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    _, port = moto.get_host_and_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "OPENAI_API_KEY": "sk-bench",
        "AWS_ACCESS_KEY_ID": "bench-id",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }
    # Here too: an upload without credentials reaches moto 5.2 as aws-chunked bytes with a
    # trailing checksum, which it stores as they came (the object is then not Parquet).
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    S3Settings.from_env(env).client().create_bucket(Bucket=BUCKET)
    try:
        with (
            tempfile.TemporaryDirectory(prefix="batchrun-s3-") as tmp,
            start_in_thread(SimConfig(latency_ms=args.latency_ms)) as sim,
        ):
            root = Path(tmp)
            table = pa.table(
                {
                    "id": [f"r{i:08d}" for i in range(rows)],
                    "text": [f"review number {i}, it works well" for i in range(rows)],
                }
            )
            pq.write_table(table, root / "input.parquet")
            spec = S3Spec(region="us-east-1", endpoint_url=endpoint)
            fs = Remote(BUCKET, spec).fs
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            put_whole(fs, f"{BUCKET}/input.parquet", sink.getvalue())
            jobs = {
                "local disk": (str(root / "input.parquet"), str(root / "out" / "result.parquet")),
                "S3": (f"s3://{BUCKET}/input.parquet", f"s3://{BUCKET}/out/result.parquet"),
            }
            print(f"{rows:,} rows, simulator latency {args.latency_ms:g} ms, moto at {endpoint}")
            for name, (source, output) in jobs.items():
                job = root / f"{name.split()[0]}.toml"
                job.write_text(
                    JOB.format(input=source, output=output, url=sim.base_url, cache=root / "c1")
                )
                before = len(sim.requests)
                ran = measure([sys.executable, "-m", "batchrun.cli", "run", str(job), "-q"], env)
                sent = len(sim.requests) - before
                assert ran.code == 0, ran.stderr
                assert sent == rows, f"{sent} requests for {rows} rows"
                print(
                    f"  run, {name}: {ran.seconds:.1f} s, {rows / ran.seconds:,.0f} rows/s, "
                    f"peak {ran.peak_mb:,.0f} MB"
                )
            s3_job = root / "S3.toml"
            for step, argv in (
                ("status from another cache", ["status", str(s3_job)]),
                ("resume from a third cache", ["run", str(s3_job), "-q"]),
            ):
                cache = root / ("c2" if step.startswith("status") else "c3")
                before = len(sim.requests)
                started = time.monotonic()
                done = measure(
                    [
                        sys.executable,
                        "-m",
                        "batchrun.cli",
                        *argv,
                        "--set",
                        f"storage.cache={cache}",
                    ],
                    env,
                )
                assert done.code == 0, done.stderr
                assert len(sim.requests) == before, "a resume from S3 sent requests"
                print(f"  {step}: {time.monotonic() - started:.1f} s, peak {done.peak_mb:,.0f} MB")
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
