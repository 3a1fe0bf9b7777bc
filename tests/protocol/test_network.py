"""Proxies and certificates (`batchrun.core.network`, the wire's routes, S3's proxy), through the
`batchrun` command against loopback servers only (see `tests.netservers`).

"Every request went through the proxy" is checked from both ends: the rows were answered,
and every connection the gateway's front accepted came from a port the proxy opened. The
proxy variables are cleared for every test (`conftest`); each test sets its own.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from batchrun.core.network import ProxyURL, bypassed, proxy_from_env, route_for
from batchrun.errors import UserError
from batchrun.sim import SimServer
from batchrun.storage.store import S3Settings, S3Spec

from ..conftest import FAKE_KEY, Workspace, reviews
from ..netservers import Front, HttpProxy, Socks5Proxy, running

ROWS = 12
LOGIN = ("proxyuser", "pr0xy-CANARY-pass")


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "test-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture
def front(sim: SimServer) -> Iterator[Front]:
    """A plain-http front for the simulator, recording where connections came from."""
    with running(Front((sim.host, sim.port))) as server:
        yield server


@pytest.fixture
def tls_front(sim: SimServer, ca: trustme.CA) -> Iterator[Front]:
    """The simulator served over https, its certificate issued by the test CA."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    with running(Front((sim.host, sim.port), context)) as server:
        yield server


@pytest.fixture
def proxy() -> Iterator[HttpProxy]:
    with running(HttpProxy()) as server:
        yield server


def dead_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run_job(ws: Workspace, base_url: str, **endpoint: str) -> tuple[int, str]:
    """`batchrun run` of ROWS rows at `base_url` (two attempts a row), with these
    [endpoint] keys; its exit code, and stdout and stderr together."""
    ws.write_input(reviews(ROWS))
    ws.job(base_url, endpoint=endpoint, limits={"max_attempts": 2})
    result = ws.run("run", str(ws.root / "job.toml"), "-q")
    return result.code, result.out + result.err


def assert_all_ok(ws: Workspace) -> None:
    frame = ws.read_output()
    assert frame.height == ROWS
    assert frame["status"].to_list() == ["ok"] * ROWS


def assert_through(front: Front, proxy: HttpProxy | Socks5Proxy) -> None:
    assert front.peers, "the gateway saw no connection"
    assert set(front.peers) <= set(proxy.upstream_ports), "a connection bypassed the proxy"


def no_password_in(ws: Workspace, text: str) -> None:
    """The proxy's password is in neither the output nor any file of the workspace."""
    needles = [LOGIN[1], LOGIN[1][:8], "CANARY-pass"]
    assert not [n for n in needles if n in text], text
    for path in ws.root.rglob("*"):
        if path.is_file() and path.name != "job.toml":
            data = path.read_bytes()
            assert not [n for n in needles if n.encode() in data], path


# -- choosing the proxy ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "direct"),
    [
        ("api.example.com", 443, "example.com", True),
        ("api.example.com", 443, ".example.com", True),
        ("example.com", 443, "*.example.com", True),
        ("notexample.com", 443, "example.com", False),
        ("127.0.0.1", 8080, "127.0.0.0/8", True),
        ("127.0.0.1", 8080, "localhost, 127.0.0.1:9090", False),
        ("127.0.0.1", 9090, "localhost,127.0.0.1:9090", True),
        ("::1", 80, "[::1]:80", True),
        ("anything", 1, "*", True),
        ("10.0.0.1", 1, "", False),
    ],
)
def test_no_proxy_matches_as_curl_and_requests_do(
    host: str, port: int, no_proxy: str, direct: bool
) -> None:
    assert bypassed(host, port, no_proxy) is direct


def test_the_variables_are_chosen_by_scheme_lower_case_first() -> None:
    env = {
        "HTTPS_PROXY": "http://upper:1",
        "https_proxy": "http://lower:2",
        "HTTP_PROXY": "socks5h://plain:3",
        "ALL_PROXY": "socks5://all:4",
    }
    assert proxy_from_env("https://api.example.com/v1", env) == ProxyURL("http", "lower", 2)
    assert proxy_from_env("http://api.example.com/v1", env) == ProxyURL("socks5h", "plain", 3)
    only_all = {"ALL_PROXY": "socks5://all:4", "https_proxy": ""}
    assert proxy_from_env("https://x/v1", only_all) == ProxyURL("socks5", "all", 4)
    assert proxy_from_env("https://x/v1", {**env, "NO_PROXY": "x"}) is None
    # The endpoint's own setting wins over the variables; "" means direct.
    assert route_for("https://x/v1", "", None, env).proxy is None
    assert route_for("https://x/v1", "socks5://mine:9", None, env).proxy == ProxyURL(
        "socks5", "mine", 9
    )


def test_a_proxy_never_shows_its_login() -> None:
    proxy = ProxyURL.parse(f"http://{LOGIN[0]}:{LOGIN[1]}@127.0.0.1:3128")
    assert (proxy.user, proxy.reveal_password()) == LOGIN
    for text in (repr(proxy), str(proxy), proxy.shown, repr(route_for("http://x", None, None, {}))):
        assert LOGIN[1] not in text and LOGIN[0] not in text
    assert proxy.redact(f"failed for {LOGIN[0]}:{LOGIN[1]}@x") == "failed for ***@x"
    assert proxy.redact(f"said {LOGIN[1]}, timed out") == "said ***, timed out"
    assert ProxyURL("http", "h", 1, "u", "pw").redact("u pw u:pw") == "u pw ***"
    with pytest.raises(UserError) as caught:
        proxy_from_env("https://x", {"HTTPS_PROXY": f"ftp://u:{LOGIN[1]}@h:1"})
    assert "HTTPS_PROXY" in str(caught.value) and LOGIN[1] not in str(caught.value)


# -- an HTTP proxy -----------------------------------------------------------------------------


def test_every_request_goes_through_the_http_proxy(
    ws: Workspace, front: Front, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", proxy.url("http"))
    code, _ = run_job(ws, front.url())
    assert code == 0
    assert_all_ok(ws)
    assert_through(front, proxy)
    # An http gateway: each request is forwarded with its absolute URI.
    wanted = f"POST http://127.0.0.1:{front.port}/v1/chat/completions"
    assert proxy.requests == [wanted] * ROWS


@pytest.mark.parametrize("how", ["no_proxy", "job_off"])
def test_no_proxy_or_an_empty_setting_goes_direct(
    ws: Workspace, front: Front, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    monkeypatch.setenv("http_proxy", proxy.url("http"))
    monkeypatch.setenv("ALL_PROXY", proxy.url("http"))
    if how == "no_proxy":
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        code, _ = run_job(ws, front.url())
    else:
        code, _ = run_job(ws, front.url(), proxy="")
    assert code == 0
    assert_all_ok(ws)
    assert proxy.requests == []
    assert front.peers and not set(front.peers) & set(proxy.upstream_ports)


def test_the_jobs_proxy_overrides_the_variables(
    ws: Workspace, front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead_port()}")
    with running(HttpProxy()) as proxy:
        code, text = run_job(ws, front.url(), proxy=proxy.url("http"))
    assert code == 0, text
    assert_all_ok(ws)
    assert_through(front, proxy)


def test_an_endpoints_proxy_with_a_login_comes_from_the_variable_proxy_env_names(
    ws: Workspace, front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{dead_port()}")
    with running(HttpProxy(login=LOGIN)) as proxy:
        monkeypatch.setenv("CORP_PROXY", proxy.url("http", LOGIN))
        code, text = run_job(ws, front.url(), proxy_env="CORP_PROXY")
    assert code == 0, text
    assert_all_ok(ws)
    assert_through(front, proxy)
    no_password_in(ws, text)
    assert LOGIN[1] not in (ws.root / "job.toml").read_text()


def test_a_password_in_the_job_files_proxy_is_refused_before_anything_is_sent(
    ws: Workspace, front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running(HttpProxy(login=LOGIN)) as proxy:
        code, text = run_job(ws, front.url(), proxy=proxy.url("http", LOGIN))
        assert proxy.requests == []
    assert code == 2, text
    assert "proxy_env" in text and "Traceback" not in text
    assert LOGIN[1] not in text and "CANARY-pass" not in text
    assert front.peers == []


def test_a_proxy_env_that_is_not_set_is_a_job_error(ws: Workspace, front: Front) -> None:
    code, text = run_job(ws, front.url(), proxy_env="NOT_SET_PROXY")
    assert code == 2, text
    assert "NOT_SET_PROXY" in text and "Traceback" not in text
    assert front.peers == []


def test_https_through_a_proxy_with_a_login_via_connect(
    ws: Workspace,
    tls_front: Front,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with running(HttpProxy(login=LOGIN)) as proxy:
        monkeypatch.setenv("HTTPS_PROXY", proxy.url("http", LOGIN))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        code, text = run_job(ws, tls_front.url("https"))
    assert code == 0, text
    assert_all_ok(ws)
    assert_through(tls_front, proxy)
    assert proxy.requests and set(proxy.requests) == {f"CONNECT 127.0.0.1:{tls_front.port}"}
    assert proxy.refused == 0
    # The API key goes inside the tunnel only, never to the proxy.
    assert not [head for head in proxy.connect_heads if FAKE_KEY in head or "Bearer" in head]
    logged = "\n".join(f"{r.getMessage()} {r.args!r}" for r in caplog.records)
    assert f"through the proxy http://127.0.0.1:{proxy.port}" in logged
    no_password_in(ws, text + logged)


def test_an_https_proxy_is_spoken_to_over_tls(
    ws: Workspace, tls_front: Front, ca: trustme.CA, ca_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with running(HttpProxy()) as proxy, running(Front(("127.0.0.1", proxy.port), context)) as tls:
        monkeypatch.setenv("HTTPS_PROXY", f"https://127.0.0.1:{tls.port}")
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        code, text = run_job(ws, tls_front.url("https"))
    assert code == 0, text
    assert_all_ok(ws)
    assert_through(tls_front, proxy)
    assert tls.peers and set(proxy.requests) == {f"CONNECT 127.0.0.1:{tls_front.port}"}


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_refused_login_stops_the_run_in_one_sentence(
    ws: Workspace,
    front: Front,
    tls_front: Front,
    ca_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
) -> None:
    wrong = (LOGIN[0], LOGIN[1] + "-wrong")
    with running(HttpProxy(login=("someone", "else"))) as proxy:
        monkeypatch.setenv(f"{scheme.upper()}_PROXY", proxy.url("http", wrong))
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        code, text = run_job(ws, (tls_front if scheme == "https" else front).url(scheme))
    assert code == 3, text
    assert proxy.refused >= 1
    assert "proxy" in text and "user and password" in text and "Traceback" not in text
    assert f"127.0.0.1:{proxy.port}" in text
    no_password_in(ws, text)


def test_a_proxy_that_is_down_fails_rows_like_any_connection(
    ws: Workspace, front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://{LOGIN[0]}:{LOGIN[1]}@127.0.0.1:{dead_port()}")
    code, text = run_job(ws, front.url())
    assert code == 0, text  # every row reached a final state
    frame = ws.read_output()
    assert frame["error"].to_list() == ["server_error"] * ROWS
    assert frame["attempts"].to_list() == [2] * ROWS
    assert "proxy" in frame["error_message"][0]
    assert front.peers == []
    no_password_in(ws, text)


# -- SOCKS5 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "login"),
    [
        ("socks5", "127.0.0.1", None),
        ("socks5h", "localhost", None),
        ("socks5h", "localhost", LOGIN),
    ],
)
def test_every_request_goes_through_the_socks5_proxy(
    ws: Workspace,
    front: Front,
    monkeypatch: pytest.MonkeyPatch,
    scheme: str,
    host: str,
    login: tuple[str, str] | None,
) -> None:
    with running(Socks5Proxy(login)) as proxy:
        monkeypatch.setenv("ALL_PROXY", proxy.url(scheme, login))
        code, text = run_job(ws, f"http://{host}:{front.port}/v1")
    assert code == 0, text
    assert_all_ok(ws)
    assert_through(front, proxy)
    # socks5h hands the proxy the name; socks5 resolves it first.
    assert set(proxy.targets) == {f"{host}:{front.port}"}
    no_password_in(ws, text)


# -- certificates ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["SSL_CERT_FILE", "ca_bundle"])
def test_a_gateway_with_a_company_ca_is_trusted(
    ws: Workspace, tls_front: Front, ca_file: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    if how == "SSL_CERT_FILE":
        monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
        code, text = run_job(ws, tls_front.url("https"))
    else:
        monkeypatch.delenv("SSL_CERT_FILE", raising=False)
        code, text = run_job(ws, tls_front.url("https"), ca_bundle=ca_file.name)
    assert code == 0, text
    assert_all_ok(ws)


def test_an_untrusted_certificate_stops_the_run_in_one_sentence(
    ws: Workspace, tls_front: Front, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    code, text = run_job(ws, tls_front.url("https"))
    assert code == 3, text
    assert "certificate is not trusted" in text and "ca_bundle" in text
    assert "Traceback" not in text


# -- mistakes a user can make: exit 2, one sentence --------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "variables", "said"),
    [
        ({"proxy": f"ftp://u:{LOGIN[1]}@127.0.0.1:21"}, {}, "scheme 'ftp'"),
        ({}, {"HTTPS_PROXY": f"gopher://u:{LOGIN[1]}@h:70"}, "HTTPS_PROXY"),
        ({"ca_bundle": "missing.pem"}, {}, "does not exist"),
        ({"ca_bundle": "job.toml"}, {}, "holds no PEM certificate"),
        ({}, {"SSL_CERT_FILE": "/nonexistent/ca.pem"}, "SSL_CERT_FILE"),
    ],
)
def test_a_wrong_setting_is_one_sentence_and_exit_2(
    ws: Workspace,
    monkeypatch: pytest.MonkeyPatch,
    endpoint: dict[str, str],
    variables: dict[str, str],
    said: str,
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    code, text = run_job(ws, "https://127.0.0.1:9/v1", **endpoint)
    assert code == 2, text
    assert said in text and "Traceback" not in text
    assert LOGIN[1] not in text


def test_the_simulator_is_reached_directly_whatever_the_variables(
    ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY"):
        monkeypatch.setenv(name, f"http://127.0.0.1:{dead_port()}")
    code, text = run_job(ws, "sim")
    assert code == 0, text
    assert_all_ok(ws)


# -- S3 ----------------------------------------------------------------------------------------


def test_s3_follows_the_proxy_variables() -> None:
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9000", "AWS_REGION": "us-east-1"}
    proxy = f"http://{LOGIN[0]}:{LOGIN[1]}@127.0.0.1:3128"
    settings = S3Spec().settings({**env, "HTTP_PROXY": proxy})
    assert settings.proxy == ProxyURL("http", "127.0.0.1", 3128, *LOGIN)
    assert settings.botocore_proxies() == {"http": proxy, "https": proxy}
    assert LOGIN[1] not in repr(settings)
    assert S3Settings.of(settings.filesystem()).proxy == settings.proxy
    direct = S3Spec().settings({**env, "HTTP_PROXY": proxy, "no_proxy": "127.0.0.1"})
    assert direct.proxy is None and direct.botocore_proxies() == {}
    with pytest.raises(UserError, match="NO_PROXY"):
        S3Spec().settings({**env, "ALL_PROXY": "socks5h://127.0.0.1:1080"})


def test_s3_goes_through_the_forward_proxy(
    s3: str, proxy: HttpProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    from batchrun.storage.store import Remote, put_whole

    from ..s3server import BUCKET

    monkeypatch.setenv("HTTP_PROXY", proxy.url("http"))
    remote = Remote.of_url(f"s3://{BUCKET}/proxied", S3Spec())
    put_whole(remote.fs, remote.child("a.txt"), b"through the proxy")  # pyarrow
    assert list(remote.names()) == ["a.txt"]
    client = remote.spec.settings().client()  # botocore
    body = client.get_object(Bucket=BUCKET, Key="proxied/a.txt")["Body"].read()
    assert body == b"through the proxy"
    port = s3.rsplit(":", 1)[1]
    through = [r for r in proxy.requests if f"127.0.0.1:{port}/{BUCKET}" in r]
    assert any(r.startswith("PUT ") for r in through), proxy.requests
    assert any(r.startswith("GET ") and "proxied/a.txt" in r for r in through), proxy.requests
