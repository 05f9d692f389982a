"""Configuration: the one place that reads the environment.

Every variable of SPEC.md's configuration table is read here with its default.
`create_app()` picks a class; tests pass their own mapping on top of `TestingConfig`.
"""

from __future__ import annotations

import os

#: Secrets production refuses to start without (SPEC.md, "Configuration").
REQUIRED_SECRETS = (
    "JWT_SECRET",
    "DEVICE_MASTER_SECRET_KEY",
    "DEVICE_AGENT_SECRET_KEY",
    "MQTT_SECRET_KEY",
)
#: The shortest secret production accepts (SPEC.md, "Configuration").
SECRET_MIN_LENGTH = 32
#: How to make one, quoted in the refusal.
MAKE_SECRET = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
#: Networks trusted to call the hooks without the secret in `flask dev` and the tests.
LOOPBACK_NETWORKS = "127.0.0.0/8,::1"


def env_str(name: str, default: str | None = None) -> str | None:
    """Return the variable, treating an empty value as unset."""
    value = os.environ.get(name)
    return value if value not in (None, "") else default


def env_int(name: str, default: int) -> int:
    """Return the variable as an int, or the default when unset."""
    value = env_str(name)
    return int(value) if value is not None else default


def env_bool(name: str, default: bool = False) -> bool:
    """Return the variable as a boolean (`1`, `true`, `yes`, `on` are true)."""
    value = env_str(name)
    if value is None:
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def database_url(url: str | None) -> str | None:
    """Accept Railway/Heroku's `postgres://` and pick the psycopg 3 driver."""
    if url is None:
        return None
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def default_web_concurrency() -> int:
    """Heroku/Railway convention: two workers per core, plus one."""
    return 2 * (os.cpu_count() or 1) + 1


class Config:
    """Production defaults, read from the environment when the class is instantiated."""

    TESTING = False

    def __init__(self) -> None:
        self.DEBUG_LOGS = env_bool("DEBUG")
        self.LOG_FORMAT = env_str("LOG_FORMAT", self.default_log_format())

        self.SQLALCHEMY_DATABASE_URI = database_url(env_str("DATABASE_URL"))
        # No pre-ping: it costs a round trip before every checkout (a login would make two).
        # Connections are replaced after DATABASE_POOL_RECYCLE seconds instead (before a
        # server or NAT drops them idle), and a read that still meets a dead one is retried
        # once (errors.retry_read, broker.device_state).
        self.SQLALCHEMY_ENGINE_OPTIONS = {"pool_recycle": env_int("DATABASE_POOL_RECYCLE", 300)}
        # Connections per process (PostgreSQL): instances × workers × (pool + overflow)
        # must stay under the server's max_connections (docs/scaling.md).
        self.DATABASE_POOL_SIZE = env_int("DATABASE_POOL_SIZE", 5)
        self.DATABASE_MAX_OVERFLOW = env_int("DATABASE_MAX_OVERFLOW", 10)

        self.JWT_SECRET = env_str("JWT_SECRET")
        self.DEVICE_MASTER_SECRET_KEY = env_str("DEVICE_MASTER_SECRET_KEY")
        self.DEVICE_AGENT_SECRET_KEY = env_str("DEVICE_AGENT_SECRET_KEY")
        self.MQTT_SECRET_KEY = env_str("MQTT_SECRET_KEY")
        self.MQTT_SERVICE_USERNAME = env_str("MQTT_SERVICE_USERNAME", "iot-server")

        self.MQTT_HOST = env_str("MQTT_HOST", "localhost:1883")
        self.MQTT_BROKER_URL = env_str("MQTT_BROKER_URL", "mqtt://localhost:1883")
        self.MQTT_SHARED_GROUP = env_str("MQTT_SHARED_GROUP")

        self.DEVICE_TOKEN_TTL = env_int("DEVICE_TOKEN_TTL", 14 * 24 * 3600)
        self.OWNER_TOKEN_TTL = env_int("OWNER_TOKEN_TTL", 24 * 3600)

        self.WEB_CONCURRENCY = env_int("WEB_CONCURRENCY", default_web_concurrency())
        self.RATELIMIT_STORAGE_URI = env_str("RATELIMIT_STORAGE_URI", "memory://")
        self.RATELIMIT_AUTH = env_str("RATELIMIT_AUTH", "5 per 5 seconds")
        self.RATELIMIT_DEFAULT = env_str("RATELIMIT_DEFAULT", "200 per 30 seconds")
        # Failed logins per username, from any address (one bucket per account).
        self.RATELIMIT_LOGIN_FAILURES = env_str("RATELIMIT_LOGIN_FAILURES", "10 per 10 minutes")
        self.TRUSTED_PROXIES = env_int("TRUSTED_PROXIES", 0)
        # Empty: behind a same-host proxy every caller would look like loopback. `flask dev`
        # sets loopback for its embedded broker; go-auth deployments name their broker.
        self.HOOK_TRUSTED_NETWORKS = env_str("HOOK_TRUSTED_NETWORKS", "")

        self.EMQX_API_URL = env_str("EMQX_API_URL")
        self.EMQX_API_KEY = env_str("EMQX_API_KEY")
        self.EMQX_API_SECRET = env_str("EMQX_API_SECRET")
        self.AUTH_NEGATIVE_TTL = env_int("AUTH_NEGATIVE_TTL", 5)
        self.HOOK_CACHE_TTL = env_int("HOOK_CACHE_TTL", 2)
        # The exact device-state cache (PostgreSQL LISTEN/NOTIFY, broker/state_cache.py):
        # a safety TTL in seconds and a size bound per process; 0 entries turns it off.
        self.DEVICE_CACHE_TTL = env_int("DEVICE_CACHE_TTL", 300)
        self.DEVICE_CACHE_SIZE = env_int("DEVICE_CACHE_SIZE", 20_000)

        # The pinger's heartbeat file, and how old it may get before the pinger is
        # unhealthy (docs/deployment.md, "Health checks"). Unset: no heartbeat.
        self.PINGER_HEALTH_FILE = env_str("PINGER_HEALTH_FILE")
        self.PINGER_HEALTH_MAX_AGE = env_int("PINGER_HEALTH_MAX_AGE", 10)

        self.MAX_CONTENT_LENGTH = 64 * 1024

    def default_log_format(self) -> str:
        """JSON lines in production; people read development logs."""
        return "json"

    def missing_secrets(self) -> list[str]:
        """Names of the required secrets that are unset."""
        return [name for name in REQUIRED_SECRETS if not getattr(self, name)]

    def startup_problems(self) -> list[str]:
        """Why production (gunicorn.conf.py) must refuse to start with this configuration:
        each a short clause, joined into one line by the caller; empty when it may start.

        A missing DATABASE_URL (production never falls back to a local SQLite file), missing,
        short or equal secrets, and `IOT_ENV=testing` (the repository's public test secrets).
        """
        problems = []
        missing = self.missing_secrets()
        required = (["DATABASE_URL"] if not self.SQLALCHEMY_DATABASE_URI else []) + missing
        if required:
            problems.append(f"missing required environment variables: {', '.join(required)}")
        present = [name for name in REQUIRED_SECRETS if getattr(self, name)]
        short = [name for name in present if len(getattr(self, name)) < SECRET_MIN_LENGTH]
        if short:
            problems.append(
                f"secrets shorter than {SECRET_MIN_LENGTH} characters: {', '.join(short)}"
            )
        for i, first in enumerate(present):
            for second in present[i + 1 :]:
                if getattr(self, first) == getattr(self, second):
                    # The registration secrets sit in every device's flash: none may sign tokens.
                    problems.append(f"{first} and {second} must differ")
        if env_str("IOT_ENV") == "testing":
            problems.append("IOT_ENV=testing is for the test suite only (public test secrets)")
        if missing or short:
            problems.append(f"make each secret with: {MAKE_SECRET}")
        return problems


class DevelopmentConfig(Config):
    """`flask run` / `flask dev`: readable logs, SQLite in the instance folder by default."""

    def default_log_format(self) -> str:
        """Readable text for a person at a terminal."""
        return "text"


class TestingConfig(DevelopmentConfig):
    """The base tests build on; they override the database and secrets per test."""

    TESTING = True

    def __init__(self) -> None:
        super().__init__()
        # Public, in the repository: gunicorn refuses IOT_ENV=testing for that reason.
        self.JWT_SECRET = "test-jwt-secret-of-a-sensible-length-0123456789"
        self.DEVICE_MASTER_SECRET_KEY = "test-master-secret-0123456789abcdefghij"
        self.DEVICE_AGENT_SECRET_KEY = "test-agent-secret-0123456789abcdefghij"
        self.MQTT_SECRET_KEY = "test-mqtt-secret-0123456789abcdefghijkl"
        self.RATELIMIT_STORAGE_URI = "memory://"
        self.RATELIMIT_AUTH = "5 per 5 seconds"
        self.RATELIMIT_DEFAULT = "200 per 30 seconds"
        self.RATELIMIT_LOGIN_FAILURES = "10 per 10 minutes"
        self.TRUSTED_PROXIES = 0
        self.HOOK_TRUSTED_NETWORKS = LOOPBACK_NETWORKS
        self.EMQX_API_URL = self.EMQX_API_KEY = self.EMQX_API_SECRET = None
        # In-process tests change rows and ask at once; the exact cache is asynchronous by
        # a notification's delivery, so the tests that exercise it turn it on themselves.
        self.DEVICE_CACHE_SIZE = 0
        self.PINGER_HEALTH_FILE = None
        self.LOG_FORMAT = "text"


CONFIGS = {
    "production": Config,
    "development": DevelopmentConfig,
    "testing": TestingConfig,
}


def config_for_env() -> Config:
    """Pick the config class from `IOT_ENV` (production unless told otherwise)."""
    name = env_str("IOT_ENV", "production")
    return CONFIGS.get(name, Config)()
