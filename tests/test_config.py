"""Configuration from the environment, and production's refusal to start without secrets."""

import os

import pytest
from conftest import MASTER_SECRET, GunicornServer
from sqlalchemy.exc import TimeoutError as PoolTimeout

from iot_server.config import (
    MAKE_SECRET,
    REQUIRED_SECRETS,
    Config,
    DevelopmentConfig,
    database_url,
)

SECRETS = {
    "JWT_SECRET": "j" * 40,
    "DEVICE_MASTER_SECRET_KEY": "m" * 40,
    "DEVICE_AGENT_SECRET_KEY": "a" * 40,
    "MQTT_SECRET_KEY": "q" * 40,
}


@pytest.fixture
def clean_env(monkeypatch):
    for name in [
        *REQUIRED_SECRETS,
        "DATABASE_URL",
        "MQTT_HOST",
        "LOG_FORMAT",
        "DEBUG",
        "RATELIMIT_STORAGE_URI",
        "TRUSTED_PROXIES",
        "WEB_CONCURRENCY",
        "IOT_ENV",
        "HOOK_TRUSTED_NETWORKS",
    ]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_defaults_follow_the_spec(clean_env):
    config = Config()
    assert config.MQTT_HOST == "localhost:1883"
    assert config.MQTT_BROKER_URL == "mqtt://localhost:1883"
    assert config.DEVICE_TOKEN_TTL == 1209600
    assert config.OWNER_TOKEN_TTL == 86400
    assert 2 * (os.cpu_count() or 1) + 1 == config.WEB_CONCURRENCY
    assert config.RATELIMIT_STORAGE_URI == "memory://"
    assert config.RATELIMIT_AUTH == "5 per 5 seconds"
    assert config.RATELIMIT_DEFAULT == "200 per 30 seconds"
    assert config.TRUSTED_PROXIES == 0
    assert config.HOOK_TRUSTED_NETWORKS == ""
    assert config.AUTH_NEGATIVE_TTL == 5
    assert config.MQTT_SERVICE_USERNAME == "iot-server"
    assert config.LOG_FORMAT == "json"
    assert DevelopmentConfig().LOG_FORMAT == "text"
    assert config.DEBUG_LOGS is False
    assert config.SQLALCHEMY_DATABASE_URI is None
    assert (config.DATABASE_POOL_SIZE, config.DATABASE_MAX_OVERFLOW) == (5, 10)
    assert config.missing_secrets() == list(REQUIRED_SECRETS)


def test_environment_overrides(clean_env):
    clean_env.setenv("MQTT_HOST", "mqtt.example.test:8883")
    clean_env.setenv("DEBUG", "true")
    clean_env.setenv("TRUSTED_PROXIES", "1")
    for name, value in SECRETS.items():
        clean_env.setenv(name, value)
    config = Config()
    assert config.MQTT_HOST == "mqtt.example.test:8883"
    assert config.DEBUG_LOGS is True
    assert config.TRUSTED_PROXIES == 1
    assert config.missing_secrets() == []


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@h:5432/d", "postgresql+psycopg://u:p@h:5432/d"),
        ("postgresql://u@h/d", "postgresql+psycopg://u@h/d"),
        ("postgresql+psycopg://u@h/d", "postgresql+psycopg://u@h/d"),
        ("sqlite:///x.db", "sqlite:///x.db"),
        (None, None),
    ],
)
def test_database_url_accepts_heroku_style(given, expected):
    assert database_url(given) == expected


def test_postgres_scheme_url_works_end_to_end(postgres_url, monkeypatch):
    """A Railway/Heroku `postgres://` URL reaches the database."""
    from sqlalchemy import text

    from iot_server import create_app
    from iot_server.extensions import db

    heroku_style = postgres_url.replace("postgresql+psycopg://", "postgres://")
    monkeypatch.setenv("DATABASE_URL", heroku_style)
    monkeypatch.setenv("IOT_ENV", "development")
    app = create_app()
    with app.app_context():
        assert db.session.execute(text("SELECT 1")).scalar() == 1
        db.engine.dispose()


def refused_gunicorn(tmp_path, database: bool = True, **env: str) -> tuple[int, str]:
    """gunicorn started with the machine's environment minus our secrets, plus `env`."""
    base = {k: v for k, v in os.environ.items() if k not in REQUIRED_SECRETS}
    base.pop("IOT_ENV", None)
    base.pop("DATABASE_URL", None)
    if database:
        base["DATABASE_URL"] = f"sqlite:///{tmp_path / 'prod.sqlite'}"
    return GunicornServer({**base, **env}, tmp_path, workers=1).refusal()


def test_startup_problems_name_the_database_and_each_secret(clean_env):
    """One list for gunicorn's one line: what is missing, and how to make a secret."""
    assert Config().startup_problems() == [
        "missing required environment variables: DATABASE_URL, " + ", ".join(REQUIRED_SECRETS),
        f"make each secret with: {MAKE_SECRET}",
    ]
    clean_env.setenv("DATABASE_URL", "postgres://u@h/d")
    for name, value in SECRETS.items():
        clean_env.setenv(name, value)
    assert Config().startup_problems() == []
    clean_env.delenv("DATABASE_URL")
    assert Config().startup_problems() == ["missing required environment variables: DATABASE_URL"]


def test_make_a_secret_makes_one():
    """The command the refusal prints works and makes a 43-character secret."""
    import subprocess
    import sys

    command = MAKE_SECRET.replace("python", sys.executable, 1)
    made = subprocess.run(command, shell=True, capture_output=True, text=True, check=True)
    assert len(made.stdout.strip()) == 43


def test_database_pool_is_sized_from_the_environment(clean_env, postgres_url):
    """DATABASE_POOL_SIZE and DATABASE_MAX_OVERFLOW bound each process's connections."""
    from iot_server import create_app
    from iot_server.extensions import db

    for name, value in SECRETS.items():
        clean_env.setenv(name, value)
    clean_env.setenv("DATABASE_URL", postgres_url)
    clean_env.setenv("DATABASE_POOL_SIZE", "2")
    clean_env.setenv("DATABASE_MAX_OVERFLOW", "0")
    config = Config()
    config.SQLALCHEMY_ENGINE_OPTIONS["pool_timeout"] = 0.2  # rather than wait 30 s
    app = create_app(config)
    with app.app_context():
        held = [db.engine.connect() for _ in range(2)]
        with pytest.raises(PoolTimeout):
            db.engine.connect()
        for connection in held:
            connection.close()
        db.engine.dispose()


@pytest.mark.slow
def test_gunicorn_refuses_to_start_without_secrets(tmp_path):
    status, stderr = refused_gunicorn(tmp_path, JWT_SECRET="x" * 40)
    assert status != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "DEVICE_MASTER_SECRET_KEY" in lines[0]
    assert "DEVICE_AGENT_SECRET_KEY" in lines[0]
    assert "MQTT_SECRET_KEY" in lines[0]
    assert "JWT_SECRET," not in lines[0]


@pytest.mark.slow
def test_gunicorn_refuses_to_start_without_database_url(tmp_path):
    """Production never serves from a local SQLite file: the same one line as secrets."""
    status, stderr = refused_gunicorn(tmp_path, database=False, **SECRETS)
    assert status != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines == ["iot_server: missing required environment variables: DATABASE_URL"]
    assert not (tmp_path / "instance").exists()


@pytest.mark.slow
def test_gunicorn_names_every_problem_and_how_to_make_a_secret(tmp_path):
    status, stderr = refused_gunicorn(tmp_path, database=False)
    assert status != 0
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert "DATABASE_URL, JWT_SECRET, DEVICE_MASTER_SECRET_KEY" in lines[0]
    assert MAKE_SECRET in lines[0]


def flask_run(tmp_path, reload: bool = False, **env: str) -> str:
    """`flask --app wsgi run` on a free port until it serves (with the reloader: until its
    child, which loads the app again, answers a request); what it wrote on stderr."""
    import subprocess
    import sys
    import urllib.request

    from conftest import ROOT, free_port, wait_until

    ours = (*REQUIRED_SECRETS, "IOT_ENV", "DATABASE_URL", "FLASK_DEBUG")
    base = {k: v for k, v in os.environ.items() if k not in ours}
    base["DATABASE_URL"] = f"sqlite:///{tmp_path / 'run.sqlite'}"
    port = free_port()
    args = ["--debug"] if reload else []
    with open(tmp_path / "run.err", "w") as err:
        process = subprocess.Popen(
            [sys.executable, "-m", "flask", "--app", "wsgi", "run", *args, "--port", str(port)],
            cwd=ROOT, env={**base, **env}, stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip

        def serves() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        try:
            assert wait_until(serves, timeout=30), (tmp_path / "run.err").read_text()
        finally:
            process.terminate()
            process.wait(timeout=10)
    return (tmp_path / "run.err").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("reload", [False, True], ids=["plain", "reloader"])
def test_flask_run_without_secrets_warns_once_naming_flask_dev(tmp_path, reload):
    stderr = flask_run(tmp_path, reload=reload)
    warnings = [line for line in stderr.splitlines() if "not set" in line]
    assert len(warnings) == 1, stderr
    assert "flask --app wsgi dev" in warnings[0]
    assert all(name in warnings[0] for name in REQUIRED_SECRETS)


@pytest.mark.slow
def test_flask_run_with_secrets_does_not_warn(tmp_path):
    stderr = flask_run(tmp_path, **SECRETS)
    assert "not set" not in stderr


@pytest.mark.slow
def test_gunicorn_refuses_equal_registration_secrets(tmp_path):
    status, stderr = refused_gunicorn(
        tmp_path, **{**SECRETS, "DEVICE_AGENT_SECRET_KEY": SECRETS["DEVICE_MASTER_SECRET_KEY"]}
    )
    assert status != 0
    assert "must differ" in stderr


def problems_with(env, **overrides: str) -> list[str]:
    """`Config().startup_problems()` with a database, SECRETS and `overrides` in the
    environment."""
    database = {"DATABASE_URL": "postgresql://db.example/iot"}
    for name, value in {**database, **SECRETS, **overrides}.items():
        env.setenv(name, value)
    return Config().startup_problems()


def test_good_secrets_have_no_startup_problems(clean_env):
    assert problems_with(clean_env) == []


@pytest.mark.parametrize("name", REQUIRED_SECRETS)
def test_a_secret_under_32_characters_is_a_startup_problem(clean_env, name):
    problems = problems_with(clean_env, **{name: "s" * 31})
    assert problems[0] == f"secrets shorter than 32 characters: {name}"
    assert "secrets.token_urlsafe(32)" in problems[-1]
    assert problems_with(clean_env, **{name: "s" * 32}) == []


@pytest.mark.parametrize(
    ("first", "second"),
    [(a, b) for i, a in enumerate(REQUIRED_SECRETS) for b in REQUIRED_SECRETS[i + 1 :]],
)
def test_any_two_equal_secrets_are_a_startup_problem(clean_env, first, second):
    """JWT_SECRET equal to a registration secret (in every device's flash) included."""
    problems = problems_with(clean_env, **{second: SECRETS[first]})
    assert problems == [f"{first} and {second} must differ"]


def test_iot_env_testing_is_a_startup_problem(clean_env):
    """TestingConfig's secrets are public: production never runs on them."""
    problems = problems_with(clean_env, IOT_ENV="testing")
    assert problems == ["IOT_ENV=testing is for the test suite only (public test secrets)"]


@pytest.mark.slow
def test_gunicorn_refuses_short_secrets_and_testing_in_one_line(tmp_path):
    """The finding: gunicorn started with JWT_SECRET=x and with IOT_ENV=testing."""
    status, stderr = refused_gunicorn(tmp_path, **{**SECRETS, "JWT_SECRET": "x"}, IOT_ENV="testing")
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert status != 0 and len(lines) == 1, stderr
    assert "secrets shorter than 32 characters: JWT_SECRET" in lines[0]
    assert "IOT_ENV=testing" in lines[0]
    assert "secrets.token_urlsafe(32)" in lines[0]
    assert SECRETS["MQTT_SECRET_KEY"] not in lines[0]  # names, never values


@pytest.mark.slow
def test_gunicorn_warns_when_memory_storage_serves_several_workers(start_gunicorn, redis_url):
    """With memory:// each worker counts alone (10 of 40 passed a 5-request limit)."""
    several = start_gunicorn(workers=2)
    one = start_gunicorn(workers=1)
    shared = start_gunicorn(workers=2, RATELIMIT_STORAGE_URI=redis_url)
    for server in (several, one, shared):
        server.stop()
    warnings = [r for r in several.records() if "memory:// with 2 workers" in r.get("message", "")]
    assert len(warnings) == 1 and warnings[0]["level"] == "WARNING", several.output()
    assert "memory://" not in one.output()
    assert "memory://" not in shared.output()


@pytest.mark.slow
def test_gunicorn_serves_json_logs_and_metrics_of_all_workers(start_gunicorn):
    import requests

    server = start_gunicorn(workers=2)
    base = server.url
    for _ in range(20):  # a new connection each: both workers serve some
        requests.get(f"{base}/healthz", headers={"Connection": "close"})
    metrics = requests.get(f"{base}/metrics").text
    healthz = [
        line
        for line in metrics.splitlines()
        if line.startswith('iot_http_requests_total{endpoint="/healthz"')
    ]
    assert healthz and float(healthz[0].split()[-1]) == 20.0, healthz
    response = requests.get(f"{base}/healthz", headers={"X-Request-ID": "req-42"})
    assert response.json() == {"c": "OK"}
    assert response.headers["X-Request-ID"] == "req-42"
    registration = requests.get(
        f"{base}/auth/devices/request?uuid=0f0e0d0c-0b0a-4908-8706-050403020100",
        headers={"Authorization": f"Bearer {MASTER_SECRET}"},
    )
    assert registration.json()["c"] == "NOT_REGISTERED"
    server.stop()
    records = server.records()
    access = [r for r in records if r.get("logger") == "access"]
    assert any(r["path"] == "/healthz" and r["request_id"] == "req-42" for r in access)
    fields = {"time", "remote", "method", "path", "status", "duration_ms", "bytes"}
    assert all(fields <= r.keys() and isinstance(r["status"], int) for r in access), access[:2]
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    assert MASTER_SECRET not in server.output()


@pytest.mark.slow
def test_gunicorn_own_errors_are_json_not_html(start_gunicorn):
    """Requests gunicorn rejects before the app (huge request line, huge header)."""
    import requests

    base = start_gunicorn(workers=1).url
    long_line = requests.get(f"{base}/auth/devices/request?uuid={'x' * 9000}")
    assert long_line.status_code == 414
    assert long_line.headers["Content-Type"] == "application/json"
    assert long_line.json()["c"] == "TOO_LARGE"
    big_header = requests.get(f"{base}/healthz", headers={"X-Big": "y" * 9000})
    assert big_header.status_code == 431
    assert big_header.json()["c"] == "TOO_LARGE"
    assert requests.get(f"{base}/healthz").json() == {"c": "OK"}
