"""Deployment files, checked without Docker.

The Dockerfiles, Procfile, railway.json, app.json and docker-compose.yml are only run on
the platforms, so these tests keep them honest here: every command they name is run in
check mode (`gunicorn --check-config`, `flask ... --help`), the EMQX configuration is
rendered by its real entrypoint and parsed with pyhocon, and the hook URLs and request
bodies in it are compared with what the app serves (`iot_server.broker.emqx_hooks`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

import pytest
import yaml
from pyhocon import ConfigFactory

ROOT = Path(__file__).resolve().parent.parent
EMQX_DIR = ROOT / "emqx"
TEMPLATE = EMQX_DIR / "emqx.conf.template"
ENTRYPOINT = EMQX_DIR / "docker-entrypoint.sh"

#: SPEC.md's configuration table, plus the variables of the EMQX container.
SPEC_VARIABLES = (
    "DATABASE_URL",
    "JWT_SECRET",
    "DEVICE_MASTER_SECRET_KEY",
    "DEVICE_AGENT_SECRET_KEY",
    "MQTT_SECRET_KEY",
    "MQTT_HOST",
    "MQTT_BROKER_URL",
    "DEVICE_TOKEN_TTL",
    "OWNER_TOKEN_TTL",
    "WEB_CONCURRENCY",
    "RATELIMIT_STORAGE_URI",
    "TRUSTED_PROXIES",
    "HOOK_TRUSTED_NETWORKS",
    "LOG_FORMAT",
    "DEBUG",
    "MQTT_ADMIN_PASSWORD",
    "EMQX_API_URL",
    "EMQX_API_KEY",
    "EMQX_API_SECRET",
    "AUTH_NEGATIVE_TTL",
    "MQTT_SERVICE_USERNAME",
    "MQTT_SHARED_GROUP",
    "RATELIMIT_AUTH",
    "RATELIMIT_DEFAULT",
)
EMQX_CONTAINER_VARIABLES = ("IOT_API_URL", "MQTT_SECRET_KEY", "MQTT_ADMIN_PASSWORD")
EMQX_OPTIONAL_VARIABLES = (
    "EMQX_API_KEY",
    "EMQX_API_SECRET",
    "EMQX_NODE__COOKIE",
    "IOT_API_CA_FILE",
)

RENDER_ENV = {
    "IOT_API_URL": "http://api.test:8000/",
    # Quote and backslash: the entrypoint must escape them for HOCON.
    "MQTT_SECRET_KEY": 's3cr"et\\key',
    "MQTT_ADMIN_PASSWORD": "admin-password-1",
    "EMQX_API_KEY": "iot-server",
    "EMQX_API_SECRET": "api-secret-0123",
}


# ---------------------------------------------------------------- helpers


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined."""
    instructions, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        current += " " + line.rstrip("\\").strip() if current else line.rstrip("\\").strip()
        if not line.endswith("\\"):
            keyword, _, args = current.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
            current = ""
    return instructions


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form CMD/ENTRYPOINT (shell form is refused)."""
    value = json.loads(args)
    assert isinstance(value, list), f"use the exec (JSON array) form: {args}"
    return value


def procfile() -> dict[str, str]:
    """Process type -> command."""
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, command = line.partition(":")
            entries[name.strip()] = command.strip()
    return entries


def compose() -> dict:
    """docker-compose.yml, parsed."""
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def render_emqx(tmp_path: Path, awk: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """Run the EMQX entrypoint's rendering step into tmp_path (with `awk` as the awk on
    PATH when given: the emqx image has mawk, this machine may have gawk)."""
    path = os.environ.get("PATH", "/usr/bin:/bin")
    if awk is not None:
        bin_dir = tmp_path / "awk-bin"
        bin_dir.mkdir(exist_ok=True)
        (bin_dir / "awk").symlink_to(shutil.which(awk))
        path = f"{bin_dir}:{path}"
    full_env = {
        "PATH": path,
        "IOT_EMQX_TEMPLATE": str(TEMPLATE),
        "IOT_EMQX_CONF": str(tmp_path / "emqx.conf"),
        "IOT_EMQX_API_KEY_FILE": str(tmp_path / "api_keys.txt"),
        **env,
    }
    return subprocess.run(
        ["sh", str(ENTRYPOINT), "--render-only"],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=30,
    )


#: The awk implementations on this machine: the image's entrypoint runs under mawk (Debian).
AWKS = [name for name in ("gawk", "mawk") if shutil.which(name)] or ["awk"]

#: Where the CA bundle of Debian's ca-certificates lives (the emqx/emqx:5.8 image).
IMAGE_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


def seconds(duration) -> float:
    """A HOCON duration as pyhocon returns it: a timedelta, or a relativedelta when
    python-dateutil is installed."""
    if hasattr(duration, "total_seconds"):
        return duration.total_seconds()
    return duration.days * 86400 + duration.hours * 3600 + duration.minutes * 60 + duration.seconds


@pytest.fixture
def rendered(tmp_path):
    """The EMQX configuration as the container would run it."""
    result = render_emqx(tmp_path, **RENDER_ENV)
    assert result.returncode == 0, result.stderr
    return ConfigFactory.parse_file(str(tmp_path / "emqx.conf"))


@pytest.fixture(scope="module")
def hooks():
    """The hook module: the one source of truth for paths and body fields."""
    from iot_server.broker import emqx_hooks

    return emqx_hooks


@pytest.fixture(scope="module")
def web_app():
    """The app on an in-memory database, to look up the routes it serves."""
    from iot_server import create_app

    return create_app({"SQLALCHEMY_DATABASE_URI": "sqlite://"})


@functools.cache
def check_dir() -> tempfile.TemporaryDirectory:
    """Scratch space for the checks' SQLite file and metrics (removed at exit)."""
    return tempfile.TemporaryDirectory(prefix="iot-deploy-check-")


@functools.cache
def run_in_check_mode(command: tuple[str, ...]) -> subprocess.CompletedProcess:
    """Run a deployment command so that it validates its target without serving."""
    program, *args = command
    if program == "gunicorn":
        argv = [sys.executable, "-m", "gunicorn", *args, "--check-config"]
    elif program == "flask":
        argv = [sys.executable, "-m", "flask", *args, "--help"]
    else:
        raise AssertionError(f"unexpected program {program!r} in {shlex.join(command)}")
    scratch = Path(check_dir().name)
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{scratch / 'check.sqlite'}",
        "PROMETHEUS_MULTIPROC_DIR": str(scratch),
        "JWT_SECRET": "check-jwt-secret-0123456789abcdefghijklmn",
        "DEVICE_MASTER_SECRET_KEY": "check-master-secret-0123456789abcdefghijklmn",
        "DEVICE_AGENT_SECRET_KEY": "check-agent-secret-0123456789abcdefghijklmn",
        "MQTT_SECRET_KEY": "check-mqtt-secret-0123456789abcdefghijklmn",
    }
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def assert_entry_point(command: str | list[str]) -> None:
    """The command starts something that exists: run it in check mode."""
    argv = shlex.split(command) if isinstance(command, str) else list(command)
    assert argv, "empty command"
    if argv[0] == "bin/boot":
        boot = ROOT / "bin" / "boot"
        assert boot.is_file() and boot.stat().st_mode & stat.S_IXUSR, "bin/boot not executable"
        for inner in boot_commands():
            assert_entry_point(inner)
        return
    if argv[0] == "flask":
        assert argv[1:3] == ["--app", "wsgi"], f"name the app: {shlex.join(argv)}"
    result = run_in_check_mode(tuple(argv))
    assert result.returncode == 0, f"{shlex.join(argv)}:\n{result.stdout}\n{result.stderr}"


def boot_commands() -> list[str]:
    """The commands bin/boot runs (its migration and the server it execs)."""
    text = (ROOT / "bin" / "boot").read_text()
    migrate = re.search(r"until (flask [^;]+);", text)
    server = re.search(r'^exec (gunicorn .+?)(?: "\$@")?$', text, re.MULTILINE)
    assert migrate and server, "bin/boot must migrate, then exec gunicorn"
    return [migrate.group(1), server.group(1)]


def strip_quoted(line: str) -> str:
    """The line without its double-quoted strings and its comment."""
    out, in_string, escaped = [], False, False
    for index, char in enumerate(line):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char == "#" or line.startswith("//", index):
            break
        else:
            out.append(char)
    return "".join(out)


# ---------------------------------------------------------------- entry points


def test_wsgi_and_gunicorn_config_exist():
    """gunicorn's target: wsgi.py defining `app`, and gunicorn.conf.py at the top."""
    assert re.search(r"^app\s*=", (ROOT / "wsgi.py").read_text(), re.MULTILINE)
    assert (ROOT / "gunicorn.conf.py").is_file()
    assert (ROOT / "migrations" / "env.py").is_file()


def test_procfile_commands_exist():
    """web is gunicorn, worker the pinger, release the migrations; each one resolves."""
    entries = procfile()
    assert entries["web"] == "gunicorn -c gunicorn.conf.py wsgi:app"
    assert entries["worker"] == "flask --app wsgi pinger"
    assert entries["release"] == "flask --app wsgi db upgrade"
    for command in entries.values():
        assert_entry_point(command)


def test_dockerfile_cmd_exists():
    """The image's CMD is the Procfile's web command, and it resolves."""
    cmd = [args for name, args in dockerfile_instructions(ROOT / "Dockerfile") if name == "CMD"]
    assert exec_form(cmd[-1]) == shlex.split(procfile()["web"])
    assert_entry_point(exec_form(cmd[-1]))


def test_boot_script_runs_migrations_then_gunicorn():
    """bin/boot's two commands resolve, and gunicorn replaces the shell."""
    migrate, server = boot_commands()
    assert migrate == procfile()["release"]
    assert server == procfile()["web"]
    assert_entry_point("bin/boot")


def test_boot_script_retries_the_migration(tmp_path):
    """A database that is not up yet is retried; gunicorn starts once it is."""
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "flask").write_text(
        '#!/bin/sh\nn=$(cat "$COUNT" 2>/dev/null || echo 0); echo $((n + 1)) > "$COUNT"\n'
        '[ "$n" -ge 2 ] || exit 1\necho "flask $*"\n'
    )
    (fake / "gunicorn").write_text('#!/bin/sh\necho "gunicorn $*"\n')
    for script in fake.iterdir():
        script.chmod(0o755)
    env = {
        "PATH": f"{fake}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "COUNT": str(tmp_path / "count"),
        "BOOT_MIGRATE_DELAY": "0",
    }
    result = subprocess.run(
        [str(ROOT / "bin" / "boot")], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "flask --app wsgi db upgrade",
        "gunicorn -c gunicorn.conf.py wsgi:app",
    ]
    assert result.stderr.count("retrying") == 2

    (tmp_path / "count").write_text("-100")
    env["BOOT_MIGRATE_ATTEMPTS"] = "3"
    result = subprocess.run(
        [str(ROOT / "bin" / "boot")], env=env, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 1
    assert "gunicorn" not in result.stdout
    assert "giving up" in result.stderr


def test_healthcheck_path_is_served(web_app):
    """/healthz, named by the image and by railway.json, answers without a database."""
    response = web_app.test_client().get("/healthz")
    assert response.status_code == 200


# ---------------------------------------------------------------- API image


def test_api_dockerfile():
    """Slim base, dependencies in their own layer, non-root, health on /healthz via $PORT."""
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    names = [name for name, _ in instructions]
    assert instructions[0] == ("FROM", "python:3.11-slim")

    copies = [(i, args) for i, (name, args) in enumerate(instructions) if name == "COPY"]
    assert copies[0][1].split()[0] == "requirements.txt", "copy requirements.txt first"
    install = next(
        i for i, (name, args) in enumerate(instructions) if name == "RUN" and "pip install" in args
    )
    assert "-r requirements.txt" in instructions[install][1]
    copy_all = next(i for i, args in copies if args.split()[0] == ".")
    assert copies[0][0] < install < copy_all

    users = [args for name, args in instructions if name == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert names.index("USER") < names.index("CMD")

    probe = image_healthcheck()[1]
    assert probe == ["/app/bin/healthcheck"]
    script = (ROOT / "bin" / "healthcheck").read_text()
    assert "/healthz" in script and "PORT" in script
    assert "curl" not in script and "wget" not in script


def image_healthcheck() -> tuple[dict[str, str], list[str]]:
    """The API image's HEALTHCHECK: its options (`interval` → `10s`) and its exec-form command."""
    healthchecks = [
        args for name, args in dockerfile_instructions(ROOT / "Dockerfile") if name == "HEALTHCHECK"
    ]
    assert len(healthchecks) == 1, healthchecks
    options, _, command = healthchecks[0].partition(" CMD ")
    parsed = dict(re.findall(r"--([a-z-]+)=(\S+)", options))
    return parsed, exec_form(command)


def image_env() -> dict[str, str]:
    """The API image's ENV values (`ENV A=1 B=2` form)."""
    env = {}
    for name, args in dockerfile_instructions(ROOT / "Dockerfile"):
        if name == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(args))
    return env


def duration_seconds(value: str) -> float:
    """A Docker/compose duration such as `10s`, `1m30s`."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", value)
    assert parts and "".join(n + u for n, u in parts) == value, value
    return sum(float(number) * units[unit] for number, unit in parts)


def test_image_healthcheck_serves_both_roles():
    """One HEALTHCHECK for the api and the pinger: bin/healthcheck (in the image, executable)
    probes /healthz or the pinger's heartbeat, written where the app user may write. Its
    interval is the heartbeat's age limit, so a stuck pinger fails within two intervals."""
    from iot_server.config import Config

    options, probe = image_healthcheck()
    instructions = dockerfile_instructions(ROOT / "Dockerfile")
    workdir = [args for name, args in instructions if name == "WORKDIR"][-1]
    script = ROOT / Path(probe[0]).relative_to(workdir)
    assert script == ROOT / "bin" / "healthcheck"
    assert script.stat().st_mode & stat.S_IXUSR
    assert not dockerignored("bin/healthcheck")
    assert script.read_text().startswith("#!/bin/sh\n")
    assert "python -m iot_server.pinger --check-health" in script.read_text()

    heartbeat = image_env()["PINGER_HEALTH_FILE"]
    assert Path(heartbeat).parent == Path("/tmp")  # the code is read-only to the app user
    assert duration_seconds(options["interval"]) == Config().PINGER_HEALTH_MAX_AGE
    assert duration_seconds(options["timeout"]) < duration_seconds(options["interval"])
    assert int(options["retries"]) >= 1


def test_image_healthcheck_probes_a_real_api(start_gunicorn):
    """For anything but the pinger (here a real gunicorn), the probe asks /healthz on $PORT:
    0 and one line while it answers, 1 once it is gone."""
    server = start_gunicorn(workers=1)
    env = {
        **os.environ,
        "PORT": str(server.port),
        "IOT_HEALTHCHECK_PID": str(server.process.pid),
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
    }
    probe = [str(ROOT / "bin" / "healthcheck")]
    result = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result
    assert result.stdout == f"healthy: http://127.0.0.1:{server.port}/healthz answered 200\n"
    server.stop()
    result = subprocess.run(probe, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout.startswith(f"unhealthy: http://127.0.0.1:{server.port}/healthz")
    assert len(result.stdout.splitlines()) == 1


def dockerignored(path: str) -> bool:
    """True when .dockerignore leaves `path` out of the API image's build context."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#") and not line.startswith("!")
    ]
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    return any(fnmatch(prefix, pattern) for pattern in patterns for prefix in prefixes)


def test_dockerignore_keeps_what_the_image_needs():
    """The build context keeps the app and drops secrets, history, and what the app never
    reads (tests, benchmarks, documentation)."""
    for needed in (
        "requirements.txt",
        "wsgi.py",
        "gunicorn.conf.py",
        "bin/boot",
        "bin/healthcheck",
        "iot_server/__init__.py",
        "iot_server/api/templates/docs.html",
        "migrations/env.py",
        "migrations/versions/0001.py",
    ):
        assert not dockerignored(needed), f"{needed} is excluded from the image"
    for secret in (".env", ".git/config", "instance/iot_server.sqlite"):
        assert dockerignored(secret), f"{secret} would be copied into the image"
    for unused in ("tests/conftest.py", "bench/README.md", "docs/deployment.md"):
        assert dockerignored(unused), f"{unused} would be copied into the image"


# ---------------------------------------------------------------- EMQX


def test_emqx_template_parses():
    """The template is valid HOCON as written (tokens sit inside strings)."""
    config = ConfigFactory.parse_file(str(TEMPLATE))
    assert config["authorization"]["no_match"] == "deny"


def test_emqx_placeholders_stay_inside_strings():
    """EMQX does not read the environment in its config file (emqx/hocon#301), and an
    unquoted ${x} would be a HOCON substitution: every ${...} must be a quoted string
    (the conditional `#@https` lines included, as the entrypoint renders them)."""
    for number, line in enumerate(TEMPLATE.read_text().splitlines(), start=1):
        line = re.sub(r"^(\s*)#@https(?:-name)? ", r"\1", line)
        assert "${" not in strip_quoted(line), f"line {number}: unquoted ${{...}}: {line}"
        assert "'" not in strip_quoted(line), f"line {number}: EMQX rejects single quotes"


def test_emqx_hook_urls_and_headers(rendered, hooks):
    """Authentication and authorization call the app's hook paths with the secret."""
    base = RENDER_ENV["IOT_API_URL"].rstrip("/")
    bearer = "Bearer " + RENDER_ENV["MQTT_SECRET_KEY"]

    [authn] = rendered["authentication"]
    assert (authn["mechanism"], authn["backend"], authn["method"]) == (
        "password_based",
        "http",
        "post",
    )
    assert authn.get("enable", True) is True
    assert authn["url"] == base + hooks.AUTHN_PATH
    assert authn["headers"]["Authorization"] == bearer
    assert authn["headers"]["Content-Type"] == "application/json"

    authz = rendered["authorization"]
    [source] = authz["sources"]
    assert (source["type"], source["method"]) == ("http", "post")
    assert source.get("enable", True) is True
    assert source["url"] == base + hooks.AUTHZ_PATH
    assert source["headers"]["Authorization"] == bearer
    assert source["headers"]["Content-Type"] == "application/json"


def emqx_hooks_config(tmp_path: Path, api_url: str, awk: str | None = None, **env: str):
    """The authenticator and the authz source rendered for `api_url`."""
    result = render_emqx(tmp_path, awk=awk, **{**RENDER_ENV, "IOT_API_URL": api_url, **env})
    assert result.returncode == 0, result.stderr
    config = ConfigFactory.parse_file(str(tmp_path / "emqx.conf"))
    [authn] = config["authentication"]
    [authz] = config["authorization"]["sources"]
    return authn, authz


@pytest.mark.parametrize("awk", AWKS)
@pytest.mark.parametrize(
    "api_url", ["http://api:8000", "http://api.example.com/base/", "http://10.0.0.5:8000"]
)
def test_emqx_plain_http_has_no_tls(tmp_path, awk, api_url):
    """An http:// API gets no `ssl` block (and needs no CA file)."""
    authn, authz = emqx_hooks_config(tmp_path, api_url, awk, IOT_API_CA_FILE="/nonexistent")
    assert authn["url"].startswith("http://") and authz["url"].startswith("http://")
    assert "ssl" not in authn
    assert "ssl" not in authz
    assert "ssl {" not in (tmp_path / "emqx.conf").read_text()


@pytest.mark.parametrize("awk", AWKS)
@pytest.mark.parametrize(
    ("api_url", "server_name"),
    [
        ("https://api.example.com", "api.example.com"),
        ("https://iot-api.up.railway.app:8443/base/", "iot-api.up.railway.app"),
        # RFC 6066 3: no IP address in SNI; the name check then uses the address.
        ("https://10.0.0.5:8443", None),
        ("https://[fd00::5]:8443", None),
    ],
)
def test_emqx_https_verifies_the_api(tmp_path, awk, api_url, server_name):
    """An https:// API gets, in the authenticator (whose validator refuses https without
    it) and in the authz source alike: TLS on, the peer verified against a CA file, and
    the URL's host as the server name."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("-----BEGIN CERTIFICATE-----\n")
    authn, authz = emqx_hooks_config(tmp_path, api_url, awk, IOT_API_CA_FILE=str(ca_file))
    assert authn["url"] == api_url.rstrip("/") + "/emqx/authn"
    expected = {"enable": True, "verify": "verify_peer", "cacertfile": str(ca_file)}
    if server_name is not None:
        expected["server_name_indication"] = server_name
    assert dict(authn["ssl"]) == expected
    assert dict(authz["ssl"]) == expected


def test_emqx_https_uses_the_image_ca_bundle_by_default(tmp_path):
    """Without IOT_API_CA_FILE the API's certificate is checked against the image's system
    CAs: Debian's bundle (emqx/emqx:5.8 is Debian with ca-certificates installed)."""
    script = ENTRYPOINT.read_text()
    assert re.search(r'"\$\{IOT_API_CA_FILE:-([^}]+)\}"', script).group(1) == IMAGE_CA_BUNDLE
    if not Path(IMAGE_CA_BUNDLE).is_file():
        pytest.skip(f"{IMAGE_CA_BUNDLE} is not on this machine")
    authn, authz = emqx_hooks_config(tmp_path, "https://api.example.com")  # no IOT_API_CA_FILE
    assert authn["ssl"]["cacertfile"] == authz["ssl"]["cacertfile"] == IMAGE_CA_BUNDLE


def test_emqx_https_refuses_a_missing_ca_file(tmp_path):
    """A CA file EMQX could not read would fail every login at connect time: refused at start."""
    env = {**RENDER_ENV, "IOT_API_URL": "https://api.example.com"}
    result = render_emqx(tmp_path, IOT_API_CA_FILE=str(tmp_path / "missing.pem"), **env)
    assert result.returncode == 1
    assert result.stderr.startswith("emqx: IOT_API_CA_FILE")
    assert not (tmp_path / "emqx.conf").exists()


@pytest.mark.parametrize("api_url", ["http://api:8000", "https://api.example.com"])
def test_emqx_hooks_time_out_after_5_seconds(tmp_path, api_url):
    """authz's request_timeout is set (EMQX's default there is 30 s) to authn's 5 s."""
    ca_file = tmp_path / "ca.pem"
    ca_file.write_text("")
    authn, authz = emqx_hooks_config(tmp_path, api_url, IOT_API_CA_FILE=str(ca_file))
    assert seconds(authz["request_timeout"]) == 5
    assert seconds(authn["request_timeout"]) == 5


def test_emqx_hook_paths_are_served(web_app, hooks):
    """The app routes POST on both hook paths."""
    adapter = web_app.url_map.bind("localhost")
    for path in (hooks.AUTHN_PATH, hooks.AUTHZ_PATH):
        endpoint, _ = adapter.match(path, method="POST")
        assert endpoint


@pytest.mark.parametrize(
    ("section", "fields"),
    [("authentication", "AUTHN_BODY_FIELDS"), ("authorization", "AUTHZ_BODY_FIELDS")],
)
def test_emqx_bodies_match_the_hooks(rendered, hooks, section, fields):
    """Each request body sends exactly the hook's fields, each as EMQX's ${field}."""
    if section == "authentication":
        [entry] = rendered["authentication"]
    else:
        [entry] = rendered["authorization"]["sources"]
    body = dict(entry["body"])
    expected = getattr(hooks, fields)
    assert sorted(body) == sorted(expected)
    assert body == {field: "${" + field + "}" for field in expected}


def test_emqx_permissive_defaults_overridden(rendered):
    """no_match deny, deny_action disconnect, the http source alone, cache bounded."""
    authz = rendered["authorization"]
    assert authz["no_match"] == "deny"
    assert authz["deny_action"] == "disconnect"
    assert [source["type"] for source in authz["sources"]] == ["http"]
    assert authz["cache"]["enable"] is True
    assert 0 < authz["cache"]["max_size"] <= 64


def test_emqx_limits_and_credentials(rendered, tmp_path):
    """Packet size limited, flapping detection on, no default dashboard password, the API
    key bootstrapped from the environment."""
    assert rendered["mqtt"]["max_packet_size"] == "64KB"
    assert rendered["flapping_detect"]["enable"] is True
    assert rendered["dashboard"]["default_password"] == RENDER_ENV["MQTT_ADMIN_PASSWORD"]
    assert rendered["dashboard"]["default_password"] != "public"
    assert rendered["node"]["cookie"] not in ("", "emqxsecretcookie")
    key_file = Path(rendered["api_key"]["bootstrap_file"])
    assert key_file == tmp_path / "api_keys.txt"
    expected = f"{RENDER_ENV['EMQX_API_KEY']}:{RENDER_ENV['EMQX_API_SECRET']}\n"
    assert key_file.read_text() == expected


def test_emqx_api_key_is_optional(tmp_path):
    """Without EMQX_API_KEY the bootstrap file is empty (no key), and EMQX still starts."""
    env = {k: v for k, v in RENDER_ENV.items() if not k.startswith("EMQX_API_")}
    result = render_emqx(tmp_path, **env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "api_keys.txt").read_text() == ""


@pytest.mark.parametrize("missing", EMQX_CONTAINER_VARIABLES)
def test_emqx_refuses_to_start_without_credentials(tmp_path, missing):
    """No default credentials: a missing variable stops the container, naming it."""
    env = {k: v for k, v in RENDER_ENV.items() if k != missing}
    result = render_emqx(tmp_path, **env)
    assert result.returncode != 0
    assert missing in result.stderr
    assert not (tmp_path / "emqx.conf").exists()


@pytest.mark.parametrize(
    "override",
    [
        {"EMQX_API_SECRET": ""},
        {"EMQX_API_SECRET": "with:colon"},
        {"MQTT_ADMIN_PASSWORD": "short"},
        {"IOT_API_URL": "api:8000"},
        {"IOT_API_URL": "https://:8443"},
        {"IOT_API_URL": "https://api.example.com/?x=1"},
        {"IOT_API_URL": "https://user:pass@api.example.com"},
        {"MQTT_SECRET_KEY": "has ${placeholder}"},
        {"MQTT_SECRET_KEY": "two\nlines"},
    ],
)
def test_emqx_refuses_unusable_values(tmp_path, override):
    """Values EMQX would misread are refused at start, not discovered at connect time."""
    result = render_emqx(tmp_path, **{**RENDER_ENV, **override})
    assert result.returncode != 0
    assert result.stderr.startswith("emqx: ")


def test_emqx_dockerfile():
    """Pinned 5.8 image, our entrypoint in front of the image's, template where the
    entrypoint looks for it, health by `emqx ctl status`."""
    instructions = dockerfile_instructions(EMQX_DIR / "Dockerfile")
    assert re.fullmatch(r"emqx/emqx:5\.8\.\d+", instructions[0][1]), instructions[0]
    script = ENTRYPOINT.read_text()

    def default(variable: str) -> str:
        return re.search(r"\$\{" + variable + r":-([^}]+)\}", script).group(1)

    copies = {args.split()[-2]: args.split()[-1] for name, args in instructions if name == "COPY"}
    assert copies["emqx.conf.template"] == default("IOT_EMQX_TEMPLATE")
    assert default("IOT_EMQX_CONF") == "/opt/emqx/etc/emqx.conf"
    entrypoint = exec_form(next(args for name, args in instructions if name == "ENTRYPOINT"))
    assert entrypoint == [copies["docker-entrypoint.sh"]]
    assert "exec /usr/bin/docker-entrypoint.sh" in script  # the image's own entrypoint
    cmd = exec_form(next(args for name, args in instructions if name == "CMD"))
    assert cmd == ["/opt/emqx/bin/emqx", "foreground"]
    healthcheck = next(args for name, args in instructions if name == "HEALTHCHECK")
    assert "emqx ctl status" in healthcheck
    assert ENTRYPOINT.stat().st_mode & stat.S_IXUSR


# ---------------------------------------------------------------- compose


def test_compose_services_and_wiring():
    """postgres, emqx, api, pinger and the proxy; the API waits for the database, never for
    EMQX."""
    services = compose()["services"]
    assert set(services) == {"postgres", "emqx", "api", "pinger", "proxy"}

    assert "pg_isready" in str(services["postgres"]["healthcheck"]["test"])
    emqx_build = services["emqx"]["build"]
    assert (emqx_build if isinstance(emqx_build, str) else emqx_build["context"]) == "./emqx"
    assert services["api"]["build"] == services["pinger"]["build"] == "."

    api_deps = services["api"]["depends_on"]
    assert api_deps["postgres"]["condition"] == "service_healthy"
    assert "emqx" not in api_deps

    api_env, pinger_env = services["api"]["environment"], services["pinger"]["environment"]
    emqx_env = services["emqx"]["environment"]
    assert pinger_env["MQTT_BROKER_URL"] == api_env["MQTT_BROKER_URL"] == "mqtt://emqx:1883"
    assert emqx_env["IOT_API_URL"] == f"http://api:{api_env['PORT']}"
    assert api_env["EMQX_API_URL"] == "http://emqx:18083"
    for name in ("MQTT_SECRET_KEY", "EMQX_API_KEY", "EMQX_API_SECRET"):
        assert emqx_env[name] == api_env[name] == pinger_env[name], name
    assert "MQTT_ADMIN_PASSWORD" in emqx_env


def test_compose_pinger_has_its_own_health_check(tmp_path):
    """The pinger serves no HTTP: compose checks its heartbeat instead of the image's probe,
    at the interval the heartbeat's age limit assumes. The api keeps the image's probe."""
    from iot_server.config import Config

    services = compose()["services"]
    check = services["pinger"]["healthcheck"]
    assert not check.get("disable", False)
    assert check["test"] == ["CMD", "python", "-m", "iot_server.pinger", "--check-health"]
    assert duration_seconds(check["interval"]) == Config().PINGER_HEALTH_MAX_AGE
    assert duration_seconds(check["timeout"]) < duration_seconds(check["interval"])
    assert "healthcheck" not in services["api"]
    # The command runs here (tests/pinger/test_heartbeat.py runs it against a live pinger):
    # with no pinger, one line and exit 1.
    env = {**os.environ, "PINGER_HEALTH_FILE": str(tmp_path / "heartbeat")}
    argv = [sys.executable, *check["test"][2:]]
    result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stdout == f"unhealthy: no heartbeat at {tmp_path / 'heartbeat'}" + (
        " (the pinger is not running, or starting)\n"
    )


def test_compose_publishes_the_proxy_not_gunicorn():
    """Slow clients: only nginx (deploy/nginx.conf, the file tests/test_proxy.py runs) is
    published; gunicorn trusts its one hop."""
    services = compose()["services"]
    api, proxy = services["api"], services["proxy"]
    assert "ports" not in api
    assert api["environment"]["TRUSTED_PROXIES"] == "1"
    assert proxy["image"].startswith("nginx:")
    assert proxy["ports"] == [
        f"{api['environment']['PORT']}:{proxy['environment']['IOT_PROXY_PORT']}"
    ]
    assert proxy["environment"]["IOT_API_UPSTREAM"] == f"api:{api['environment']['PORT']}"
    assert "./deploy/nginx.conf:/etc/nginx/templates/default.conf.template:ro" in proxy["volumes"]
    template = (ROOT / "deploy" / "nginx.conf").read_text()
    assert set(re.findall(r"\$\{(\w+)\}", template)) == {"IOT_API_UPSTREAM", "IOT_PROXY_PORT"}


def test_compose_commands_exist():
    """The api boots through bin/boot, the pinger is the Procfile's worker."""
    services = compose()["services"]
    assert services["api"]["command"] == ["bin/boot"]
    assert services["pinger"]["command"] == shlex.split(procfile()["worker"])
    for service in ("api", "pinger"):
        assert_entry_point(services[service]["command"])


def test_compose_requires_every_secret():
    """Required secrets come from .env with `${VAR:?...}`: no default credentials."""
    from iot_server.config import REQUIRED_SECRETS

    services = compose()["services"]
    for service in ("api", "pinger"):
        env = services[service]["environment"]
        for name in REQUIRED_SECRETS:
            assert env[name].startswith("${" + name + ":?"), (service, name)
    assert services["emqx"]["environment"]["MQTT_ADMIN_PASSWORD"].startswith(
        "${MQTT_ADMIN_PASSWORD:?"
    )


def test_compose_escapes_dollars():
    """Compose interpolates every `${...}`: EMQX placeholders would need `$$`."""

    def strings(node):
        if isinstance(node, dict):
            for value in node.values():
                yield from strings(value)
        elif isinstance(node, list):
            for value in node:
                yield from strings(value)
        elif isinstance(node, str):
            yield node

    for value in strings(compose()):
        for name in re.findall(r"(?<!\$)\$\{([^}:?-]+)", value):
            assert name.isupper(), f"{value!r}: write $${{{name}}} for a literal placeholder"


# ---------------------------------------------------------------- Railway, Heroku


def test_railway_json():
    """Built from the Dockerfile, started by bin/boot, health on /healthz."""
    config = json.loads((ROOT / "railway.json").read_text())
    assert config["build"]["builder"] == "DOCKERFILE"
    assert (ROOT / config["build"]["dockerfilePath"]).is_file()
    assert config["deploy"]["healthcheckPath"] == "/healthz"
    assert_entry_point(config["deploy"]["startCommand"])


def test_railway_pinger_and_emqx_configs():
    """The pinger service has its own config (no HTTP health check); EMQX builds emqx/."""
    pinger = json.loads((ROOT / "railway.pinger.json").read_text())
    assert pinger["build"]["builder"] == "DOCKERFILE"
    assert "healthcheckPath" not in pinger["deploy"]
    assert pinger["deploy"]["startCommand"] == procfile()["worker"]
    assert_entry_point(pinger["deploy"]["startCommand"])
    emqx = json.loads((EMQX_DIR / "railway.json").read_text())
    assert emqx["build"]["builder"] == "DOCKERFILE"
    assert "startCommand" not in emqx.get("deploy", {})


def test_app_json():
    """Heroku: every required secret generated, PostgreSQL, web and worker dynos."""
    from iot_server.config import REQUIRED_SECRETS

    config = json.loads((ROOT / "app.json").read_text())
    env = config["env"]
    for name in REQUIRED_SECRETS:
        assert env[name].get("generator") == "secret", name
    assert set(env) <= set(SPEC_VARIABLES), set(env) - set(SPEC_VARIABLES)
    assert "MQTT_ADMIN_PASSWORD" not in env  # the EMQX container's, not the app's
    for name, entry in env.items():
        if "value" not in entry and "generator" not in entry and entry.get("required", True):
            assert name in ("MQTT_HOST", "MQTT_BROKER_URL"), f"{name}: required with no value"
    assert any(addon["plan"].startswith("heroku-postgresql") for addon in config["addons"])
    assert set(config["formation"]) == {"web", "worker"} <= set(procfile())


def test_configuration_documents_every_variable():
    """docs/configuration.md's table names every variable the code reads and SPEC.md lists;
    docs/deployment.md names every variable of the EMQX container."""
    code = (ROOT / "iot_server" / "config.py").read_text() + (ROOT / "gunicorn.conf.py").read_text()
    read = set(re.findall(r"env_(?:str|int|bool)\(\s*\"([A-Z][A-Z0-9_]+)\"", code))
    read |= set(re.findall(r"environ\.get\(\s*\"([A-Z][A-Z0-9_]+)\"", code))
    assert "DATABASE_URL" in read and "JWT_SECRET" in read  # the patterns still match
    table = (ROOT / "docs" / "configuration.md").read_text()
    missing = [name for name in sorted(read | set(SPEC_VARIABLES)) if f"`{name}`" not in table]
    assert not missing, missing
    deployment = (ROOT / "docs" / "deployment.md").read_text()
    emqx_variables = EMQX_CONTAINER_VARIABLES + EMQX_OPTIONAL_VARIABLES
    missing = [name for name in emqx_variables if f"`{name}`" not in deployment]
    assert not missing, missing
