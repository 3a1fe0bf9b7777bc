"""How batchrun reaches a host: through which proxy, if any, and trusting which certificates.

Proxies are chosen as curl and requests choose them, from the mapping of variables the CLI
or the config loader hands down (never `os.environ` read here):

- a URL's scheme picks its variable: `https_proxy`/`HTTPS_PROXY` for https, `http_proxy`/
  `HTTP_PROXY` for http, then `all_proxy`/`ALL_PROXY` for either (the lower-case name wins,
  as in requests and urllib; an empty value is unset);
- `no_proxy`/`NO_PROXY` names hosts reached directly: `*`, host names (each also covering its
  subdomains, with or without a leading dot), IP addresses and CIDR blocks, optionally with
  `:port`;
- an endpoint's own `proxy` setting replaces all of them: a URL is used for that endpoint
  whatever the variables say, and `""` means direct.

A proxy is `http://`, `https://` (TLS to the proxy itself), `socks5://` (batchrun resolves the
gateway's name, then asks the proxy for its address) or `socks5h://` (the proxy resolves the
name: the one to use where local DNS cannot see the gateway). A proxy's user and password are
held by `ProxyURL`, which never shows them: its repr and `shown` carry scheme, host and port
only, and `redact` masks them in any text.

Certificates are verified against the operating system's trust store (`truststore`), plus
`SSL_CERT_FILE` / `SSL_CERT_DIR` from the variables (a company's inspecting proxy brings its
own CA), plus an endpoint's `ca_bundle`, read when the job is loaded.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote, unquote, urlsplit

from ..errors import UserError

SCHEMES = ("http", "https", "socks5", "socks5h")
SOCKS = ("socks5", "socks5h")
_DEFAULT_PORTS = {"http": 80, "https": 443, "socks5": 1080, "socks5h": 1080}


class ProxyURL:
    """A proxy's address and, where it has them, its user and password (never shown)."""

    __slots__ = ("_password", "_user", "host", "port", "scheme")

    def __init__(
        self, scheme: str, host: str, port: int, user: str = "", password: str = ""
    ) -> None:
        self.scheme = scheme  # one of SCHEMES
        self.host = host  # a name or an IP address, without brackets
        self.port = port
        self._user = user  # percent-decoded; "" when the URL has none
        self._password = password

    @classmethod
    def parse(cls, text: str) -> ProxyURL:
        """A proxy URL (`scheme://[user:password@]host[:port]`; without a scheme, http);
        ValueError saying what is wrong, never repeating the text (it may hold a password)."""
        text = text.strip()
        if "://" not in text:
            text = "http://" + text
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            raise ValueError("is not a proxy URL (scheme://host:port)") from None
        scheme = parts.scheme.lower()
        if scheme not in SCHEMES:
            raise ValueError(
                f"has the scheme {scheme!r}, which batchrun cannot use as a proxy: give "
                f"{', '.join(s + '://' for s in SCHEMES)}"
            )
        if not parts.hostname:
            raise ValueError("names no host (scheme://host:port)")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("has a path or query: a proxy is only scheme://host:port")
        return cls(
            scheme,
            parts.hostname,
            port if port is not None else _DEFAULT_PORTS[scheme],
            unquote(parts.username or ""),
            unquote(parts.password or ""),
        )

    @property
    def shown(self) -> str:
        """The proxy as messages name it: no user, no password."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def user(self) -> str:
        return self._user

    def reveal_password(self) -> str:
        """The password itself, for the proxy's handshake only."""
        return self._password

    @property
    def has_credentials(self) -> bool:
        return bool(self._user or self._password)

    @property
    def has_password(self) -> bool:
        return bool(self._password)

    def redact(self, text: str) -> str:
        """`text` with the proxy's login (`user:password`) and its password masked, as given
        and percent-encoded. A password under 4 characters is masked only in its login: masking
        it alone would garble every message (and the user alone is no secret to mask)."""
        if not self.has_credentials:
            return text
        user, password = self._user, self._password
        for login in {f"{user}:{password}", f"{quote(user, safe='')}:{quote(password, safe='')}"}:
            text = text.replace(login, "***")
        if len(password) >= 4:
            for form in {password, quote(password, safe="")}:
                text = text.replace(form, "***")
        return text

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ProxyURL):
            return NotImplemented
        mine = (self.scheme, self.host, self.port, self._user, self._password)
        return mine == (other.scheme, other.host, other.port, other._user, other._password)

    def __hash__(self) -> int:
        return hash((self.scheme, self.host, self.port))

    def __repr__(self) -> str:
        login = "***@" if self.has_credentials else ""
        return f"ProxyURL('{self.scheme}://{login}{self.shown.partition('://')[2]}')"

    __str__ = __repr__


@dataclass(frozen=True)
class Route:
    """How the connections to one host are made: through `proxy` or directly, and trusting
    the system's store plus `cafiles`, `capath` and `ca_pem`."""

    proxy: ProxyURL | None = None
    cafiles: tuple[str, ...] = ()  # SSL_CERT_FILE, when set
    capath: str | None = None  # SSL_CERT_DIR, when set
    ca_pem: str | None = field(default=None, repr=False)  # the endpoint's ca_bundle, read

    @property
    def shown(self) -> str:
        """How messages name the route: "directly" or "through <proxy>"."""
        return f"through the proxy {self.proxy.shown}" if self.proxy else "directly"

    def ssl_context(self) -> ssl.SSLContext:
        """A client context verifying against the system's store and this route's CAs."""
        import truststore

        context = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        for cafile in self.cafiles:
            context.load_verify_locations(cafile=cafile)
        if self.capath:
            context.load_verify_locations(capath=self.capath)
        if self.ca_pem:
            context.load_verify_locations(cadata=self.ca_pem)
        return context


DIRECT = Route()


def route_for(
    url: str, setting: str | None, ca_pem: str | None, environ: Mapping[str, str]
) -> Route:
    """The route to `url`: the endpoint's own proxy `setting` ("" for none, None to follow
    the variables), the CAs the variables add, and the endpoint's `ca_pem`. A UserError
    naming the variable when one of them cannot be used."""
    if setting is None:
        proxy = proxy_from_env(url, environ)
    elif setting.strip():
        proxy = ProxyURL.parse(setting)  # checked when the job was loaded
    else:
        proxy = None
    cafiles: tuple[str, ...] = ()
    capath = None
    if urlsplit(url).scheme == "https" or (proxy is not None and proxy.scheme == "https"):
        cafiles, capath = _trusted_from_env(environ)
    return Route(proxy, cafiles, capath, ca_pem)


def proxy_from_env(url: str, environ: Mapping[str, str]) -> ProxyURL | None:
    """The proxy the variables give for `url`, or None (no variable, or NO_PROXY names it)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    chosen = _variable(environ, f"{scheme}_proxy") or _variable(environ, "all_proxy")
    if chosen is None:
        return None
    name, value = chosen
    no_proxy = _variable(environ, "no_proxy")
    port = parts.port or (443 if scheme == "https" else 80)
    if no_proxy is not None and bypassed(parts.hostname or "", port, no_proxy[1]):
        return None
    try:
        return ProxyURL.parse(value)
    except ValueError as exc:
        raise UserError(
            f"The variable {name} {exc}; fix it, or set proxy in the job's endpoint."
        ) from None


def _variable(environ: Mapping[str, str], lower: str) -> tuple[str, str] | None:
    """(name, value) of a variable in either case, the lower-case one first; None if both
    are unset or empty."""
    for name in (lower, lower.upper()):
        value = environ.get(name, "").strip()
        if value:
            return name, value
    return None


def bypassed(host: str, port: int, no_proxy: str) -> bool:
    """Whether NO_PROXY's list reaches `host` (at `port`) directly."""
    host = host.lower().strip("[]").rstrip(".")
    address = _address(host)
    for entry in no_proxy.replace(" ", ",").split(","):
        entry = entry.strip().lower()
        if not entry:
            continue
        if entry == "*":
            return True
        entry, wanted_port = _split_port(entry)
        if wanted_port is not None and wanted_port != port:
            continue
        if address is not None and "/" in entry:
            try:
                if address in ipaddress.ip_network(entry, strict=False):
                    return True
            except ValueError:
                pass
            continue
        entry = entry.removeprefix("*").removeprefix(".").rstrip(".")
        if entry and (host == entry or host.endswith("." + entry)):
            return True
    return False


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _split_port(entry: str) -> tuple[str, int | None]:
    """A NO_PROXY entry as (host, port or None); "[::1]:80", "example.com:8080", "::1"."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest.removeprefix(":")
        return host, int(port) if port.isdigit() else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        if port.isdigit():
            return host, int(port)
    return entry, None


def _trusted_from_env(environ: Mapping[str, str]) -> tuple[tuple[str, ...], str | None]:
    """SSL_CERT_FILE and SSL_CERT_DIR, checked: a UserError naming one that cannot be used."""
    cafile = environ.get("SSL_CERT_FILE", "").strip()
    capath = environ.get("SSL_CERT_DIR", "").strip()
    if cafile:
        problem = pem_problem(cafile)
        if problem:
            raise UserError(f"SSL_CERT_FILE names {cafile}, which {problem}: fix it or unset it.")
    if capath and not os.path.isdir(capath):
        raise UserError(f"SSL_CERT_DIR names {capath}, which is not a folder: fix it or unset it.")
    return ((cafile,) if cafile else ()), (capath or None)


def pem_problem(path: str) -> str | None:
    """None if `path` is a file of PEM certificates; else what is wrong with it."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return "does not exist"
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if b"-----BEGIN CERTIFICATE-----" not in data:
        return "holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
    try:
        ssl.create_default_context(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError):
        return "is not a valid PEM certificate bundle"
    return None
