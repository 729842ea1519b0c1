"""Settings, all from the environment (12-factor). One module; the defaults are the embedded shape
(SQLite in WAL mode and a filesystem broker), and DATABASE_URL / REDIS_URL switch to PostgreSQL and Redis."""

import os
import re
from datetime import timedelta
from ipaddress import ip_network
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("RECSITE_VAR_DIR", default=str(BASE_DIR / "var")))

env = environ.Env()
VAR_DIR.mkdir(parents=True, exist_ok=True)
(VAR_DIR / "static").mkdir(exist_ok=True)

DEBUG = env.bool("DEBUG", default=False)
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

# --- Secrets and HTTPS ----------------------------------------------------------------------------
# No built-in key outside DEBUG: sessions and password-reset tokens signed with a key from the source are forgeable.
# `make run` and `make demo` generate one into var/secret_key; pytest uses recsite/settings_test.py.
SECRET_KEY = env.str("SECRET_KEY", default="django-insecure-debug-only-key" if DEBUG else "")
if not SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY is not set and DEBUG is off: set SECRET_KEY to a long random value, e.g. the output of "
        "python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )
# DEPLOYMENT=production (behind HTTPS) turns on HSTS, the HTTPS redirect and secure cookies; each can still be set
# on its own. The default, local, keeps plain http on localhost working.
DEPLOYMENT = env.str("DEPLOYMENT", default="local")
if DEPLOYMENT not in ("local", "production"):
    raise ImproperlyConfigured(f"DEPLOYMENT must be local or production, got {DEPLOYMENT!r}")
_HTTPS = DEPLOYMENT == "production"
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=_HTTPS)
# The orchestrator's health check and Prometheus's scrape speak plain http inside.
SECURE_REDIRECT_EXEMPT = [r"^api/v1/health$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if _HTTPS else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=_HTTPS)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=_HTTPS)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=_HTTPS)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=_HTTPS)
# Only behind a proxy that sets X-Forwarded-Proto and appends to X-Forwarded-For itself: clients could forge both.
BEHIND_TLS_PROXY = env.bool("BEHIND_TLS_PROXY", default=False)
if BEHIND_TLS_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# `check --deploy` also runs drf-spectacular's schema check: a schema that does not generate cleanly (an error or a
# warning) fails the deployment check, as `spectacular --validate --fail-on-warn` fails CI.

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework_api_key",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI and ReDoc served from our static files, no CDN
    "django_celery_beat",
    "axes",  # admin login throttling, see AXES_* below
    "recommendations",
    "retraining",
    "registry",
]

MIDDLEWARE = [
    "recommendations.shadow.LiveRequestMiddleware",  # first: shadow scoring gives way to any live request
    "recsite.metrics_http.RequestMetricsMiddleware",  # times every request, shed ones included
    "recsite.shedding.LoadSheddingMiddleware",  # then a request that queued too long is refused before any work
    # A request id on every response; NUL characters in an /api/ path, query or header refused before any view.
    "recsite.middleware.ApiRequestMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "axes.middleware.AxesMiddleware",  # last: turns a locked-out login into its 429 response
]

ROOT_URLCONF = "recsite.urls"
WSGI_APPLICATION = "recsite.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def _database_config() -> dict:
    config = env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")
    if config["ENGINE"] == "django.db.backends.sqlite3":
        # WAL lets the web server, worker and beat read while one of them writes; IMMEDIATE takes the
        # write lock at BEGIN so concurrent writers queue on busy_timeout instead of failing mid-transaction.
        config.setdefault("OPTIONS", {}).update(
            {
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL; PRAGMA busy_timeout=20000",
                "transaction_mode": "IMMEDIATE",
                "timeout": 20,
            }
        )
        # A file, not :memory:, so that worker processes started by the tests see the test database.
        config["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
    elif config["ENGINE"] == "django.db.backends.postgresql":
        config.setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
        config.setdefault("CONN_HEALTH_CHECKS", True)
        options = config.setdefault("OPTIONS", {})
        options["options"] = _without_jit(options.get("options", ""))
    else:
        raise ImproperlyConfigured(f"DATABASE_URL must be sqlite:// or postgres://, got engine {config['ENGINE']}")
    return config


def _without_jit(options: str) -> str:
    """libpq's `options` with JIT compilation off for the session (unless the URL sets jit itself). The service's
    statements are short and many: the planner's cost guess for one of them (the fold reads 1,000 events by key
    while a partition's statistics are stale: cost ~2M against jit_above_cost 100,000) made PostgreSQL compile it
    with LLVM, 0.4-2.2 s of its CPU for a statement that runs in 5-15 ms, once per fold (bench/ingest.py's shared
    users, README "Ingestion"). A session setting: the server's configuration is untouched."""
    return options if "jit" in options else f"{options} -c jit=off".strip()


DATABASES = {"default": _database_config()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
        }
    }

# --- Admin login throttling (django-axes) -----------------------------------------------------------
# After AXES_FAILURE_LIMIT wrong passwords for one username from one IP address, that pair is refused (429), even
# with the right password, until AXES_COOLOFF_MINUTES pass without another attempt. Kept in the database, so every
# web process sees the same count. `manage.py axes_reset` lifts all lockouts.
AUTHENTICATION_BACKENDS = ["axes.backends.AxesStandaloneBackend", "django.contrib.auth.backends.ModelBackend"]
AXES_FAILURE_LIMIT = env.int("AXES_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("AXES_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "recsite.admin.login_client_ip"  # the client behind the TLS proxy, not the proxy
if AXES_FAILURE_LIMIT < 1 or timedelta(0) >= AXES_COOLOFF_TIME:
    raise ImproperlyConfigured("AXES_FAILURE_LIMIT must be >= 1 and AXES_COOLOFF_MINUTES positive")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["recommendations.auth.ApiKeyAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["recommendations.auth.HasScope"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["recsite.parsers.StrictJSONParser"],  # refuses deep nesting, NULs, overflows
    "DEFAULT_SCHEMA_CLASS": "recsite.schema.ApiAutoSchema",  # error bodies, Api-Key scheme, unique names
    "EXCEPTION_HANDLER": "recsite.errors.api_exception_handler",
    "UNAUTHENTICATED_USER": None,
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Recommendation service API",
    "DESCRIPTION": "Events in, recommendations out; the model retrains itself.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    # Request bodies as components of their own ("...Request"): only they carry minLength 1 for non-blank strings.
    "COMPONENT_SPLIT_REQUEST": True,
    # API docs: Swagger UI and ReDoc from drf-spectacular-sidecar's static files, so they work offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},  # no badge fetched from swagger.io
    "ENUM_NAME_OVERRIDES": {
        "ModelStatusEnum": "registry.models.ModelStatus",
        "RunStatusEnum": "retraining.models.RunStatus",
        "ExperimentStatusEnum": "registry.models.Experiment.Status",
        "DeploymentModeEnum": "registry.models.DeploymentMode",
        "ChallengerModeEnum": "registry.models.CHALLENGER_MODES",
    },
}

# --- Celery -------------------------------------------------------------------------------------
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "filesystem://"
if CELERY_BROKER_URL.startswith("filesystem://"):
    for folder in ("queue", "processed", "control"):
        (BROKER_DIR / folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Longer than any task's hard time limit, so a running training task is never redelivered under it.
        "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", default=4 * 3600),
        # A Redis that is gone or hung fails a publish in seconds rather than hanging the request that enqueues.
        "socket_connect_timeout": 2,
        "socket_timeout": 5,
    }
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_TIMEZONE = "UTC"
# Broker outages: a publish is retried briefly (about 0.4 s), then fails, so retrain answers 503 at once.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.2}
CELERY_BROKER_CONNECTION_TIMEOUT = 2

# --- Training runs: lease, heartbeat, reconciler and time limits (a dead trainer is noticed in about a minute) ---
TRAINING_LEASE_SECONDS = env.int("TRAINING_LEASE_SECONDS", default=60)
TRAINING_HEARTBEAT_SECONDS = env.float("TRAINING_HEARTBEAT_SECONDS", default=10.0)
TRAINING_RECONCILE_SECONDS = env.float("TRAINING_RECONCILE_SECONDS", default=15.0)
TRAINING_SOFT_TIME_LIMIT = env.int("TRAINING_SOFT_TIME_LIMIT", default=3 * 3600)
TRAINING_TIME_LIMIT = env.int("TRAINING_TIME_LIMIT", default=TRAINING_SOFT_TIME_LIMIT + 600)
if not 0 < 3 * TRAINING_HEARTBEAT_SECONDS <= TRAINING_LEASE_SECONDS:
    raise ImproperlyConfigured(
        "TRAINING_HEARTBEAT_SECONDS must be positive and at most a third of TRAINING_LEASE_SECONDS"
    )
if TRAINING_RECONCILE_SECONDS <= 0:
    raise ImproperlyConfigured("TRAINING_RECONCILE_SECONDS must be positive")
_visibility = CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", float("inf"))
if not 0 < TRAINING_SOFT_TIME_LIMIT < TRAINING_TIME_LIMIT < _visibility:
    raise ImproperlyConfigured(
        f"Training time limits must satisfy 0 < TRAINING_SOFT_TIME_LIMIT "
        f"({TRAINING_SOFT_TIME_LIMIT}) < TRAINING_TIME_LIMIT ({TRAINING_TIME_LIMIT}) < "
        f"the broker's visibility timeout ({_visibility})"
    )

# --- Training on a Dask cluster (retraining/ml/distributed.py): unset, training runs in the worker's process ---
# e.g. tcp://dask-scheduler:8786 (README "Training on a Dask cluster").
DASK_SCHEDULER_ADDRESS = env.str("DASK_SCHEDULER_ADDRESS", default="")
if DASK_SCHEDULER_ADDRESS and "://" not in DASK_SCHEDULER_ADDRESS:
    raise ImproperlyConfigured(
        f"DASK_SCHEDULER_ADDRESS must be a URL such as tcp://host:8786, got {DASK_SCHEDULER_ADDRESS!r}"
    )

# --- The product's own settings -----------------------------------------------------------------
RATING_MIN = env.float("RATING_MIN", default=0.5)
RATING_MAX = env.float("RATING_MAX", default=5.0)
if not 0 <= RATING_MIN < RATING_MAX:
    raise ImproperlyConfigured(f"RATING_MIN ({RATING_MIN}) must be >= 0 and below RATING_MAX ({RATING_MAX})")
CATALOG_STRICT = env.bool("CATALOG_STRICT", default=False)
MAX_EVENTS_PER_REQUEST = env.int("MAX_EVENTS_PER_REQUEST", default=1000)
MAX_FUTURE_SKEW_SECONDS = env.int("MAX_FUTURE_SKEW_SECONDS", default=300)
DEMO_PORT = env.int("PORT", default=8000)
MODEL_POLL_SECONDS = env.float("MODEL_POLL_SECONDS", default=1.0)
MODEL_POLL_THREAD = env.bool("MODEL_POLL_THREAD", default=True)
MODEL_RETRY_SECONDS = env.float("MODEL_RETRY_SECONDS", default=30.0)
ITEM_SNAPSHOT_SECONDS = env.float("ITEM_SNAPSHOT_SECONDS", default=5.0)  # how stale serving's item features may be
if ITEM_SNAPSHOT_SECONDS < 0:
    raise ImproperlyConfigured(f"ITEM_SNAPSHOT_SECONDS ({ITEM_SNAPSHOT_SECONDS}) must be >= 0")
# Serving scores candidates with the ranker compiled to native code by lleaves (same scores, ~5x faster than
# LightGBM's predictor); off, or if compiling fails, LightGBM's predictor is used.
RANKER_COMPILED = env.bool("RANKER_COMPILED", default=True)
IMPRESSION_FLUSH_SECONDS = env.float("IMPRESSION_FLUSH_SECONDS", default=0.5)
MAX_RECOMMENDATIONS = 100
# Shadow scoring (recommendations/shadow.py): queued jobs at most, and how long one may wait for an idle moment.
SHADOW_QUEUE_SIZE = env.int("SHADOW_QUEUE_SIZE", default=200)
SHADOW_MAX_DELAY_SECONDS = env.float("SHADOW_MAX_DELAY_SECONDS", default=2.0)
SHADOW_MAX_UTILIZATION = env.float("SHADOW_MAX_UTILIZATION", default=0.7)
# An event without a recommendation_id is attributed to the latest list that served its item to its user
# this many minutes before it at most.
ATTRIBUTION_WINDOW_MINUTES = env.float("ATTRIBUTION_WINDOW_MINUTES", default=30.0)
if ATTRIBUTION_WINDOW_MINUTES <= 0:
    raise ImproperlyConfigured("ATTRIBUTION_WINDOW_MINUTES must be positive.")
# A list's outcome row is written this long after its attribution window closes: room for impressions still in
# a web process's buffer and for events that reach the API a little after they happened.
OUTCOME_LATE_SECONDS = env.float("OUTCOME_LATE_SECONDS", default=300.0)
if OUTCOME_LATE_SECONDS < 0:
    raise ImproperlyConfigured("OUTCOME_LATE_SECONDS must not be negative.")
MODEL_STORE = Path(env.str("MODEL_STORE", default=str(VAR_DIR / "models")))
# Follow the accelerated clock that `manage.py replay` writes (a SystemClock row). Off: every process reads real
# time only, so a replay's leftover row cannot change time in a deployment that never asked for replay.
REPLAY_CLOCK_ENABLED = env.bool("REPLAY_CLOCK_ENABLED", default=False)

# --- Artifact store: where model versions' files live (registry/artifacts.py) ---------------------------------
# local: the folder MODEL_STORE. s3: an S3-compatible bucket shared by every host (AWS S3, MinIO, ...); credentials
# come from boto3's usual sources (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, an instance role, ~/.aws).
ARTIFACT_STORAGE = env.str("ARTIFACT_STORAGE", default="local")
if ARTIFACT_STORAGE == "local":
    STORAGES["artifacts"] = {"BACKEND": "registry.storage.LocalArtifactStorage"}
elif ARTIFACT_STORAGE == "s3":
    if not env.str("ARTIFACT_S3_BUCKET", default=""):
        raise ImproperlyConfigured("ARTIFACT_STORAGE=s3 needs ARTIFACT_S3_BUCKET, the bucket that holds the artifacts")
    _endpoint = env.str("ARTIFACT_S3_ENDPOINT_URL", default="") or None
    STORAGES["artifacts"] = {
        "BACKEND": "storages.backends.s3.S3Storage",
        "OPTIONS": {
            "bucket_name": env.str("ARTIFACT_S3_BUCKET"),
            "endpoint_url": _endpoint,
            "region_name": env.str("ARTIFACT_S3_REGION", default="") or None,
            "location": env.str("ARTIFACT_S3_PREFIX", default="artifacts"),
            # MinIO and most self-hosted stores want path-style URLs; AWS itself takes either.
            "addressing_style": env.str("ARTIFACT_S3_ADDRESSING_STYLE", default="path" if _endpoint else "") or None,
            "file_overwrite": False,  # versions are immutable: a taken name is refused (registry/artifacts.py)
            "default_acl": None,
            "querystring_auth": False,
        },
    }
else:
    raise ImproperlyConfigured(f"ARTIFACT_STORAGE must be 'local' or 's3', got {ARTIFACT_STORAGE!r}")
# This host's verified copies of remote artifacts, keyed by sha256 (default MODEL_STORE/cache), and how many it keeps.
ARTIFACT_CACHE_DIR = env.str("ARTIFACT_CACHE_DIR", default="") or None
ARTIFACT_CACHE_KEEP = env.int("ARTIFACT_CACHE_KEEP", default=8)
if ARTIFACT_CACHE_KEEP < 2:
    raise ImproperlyConfigured(
        f"ARTIFACT_CACHE_KEEP must be >= 2 (a champion and a challenger), got {ARTIFACT_CACHE_KEEP}"
    )

# Registry integrity: the function that checks a version's models load before any pointer moves to it. The
# registry holds no ML (ARCHITECTURE.md), so the serving app provides it; named here, not registered at run time.
REGISTRY_ARTIFACT_VERIFIER = "recommendations.serving.loading.artifact_models_check"

# Called with `change_id` after a deployment change (a champion or challenger pointer moved) commits, never inside
# the pointer's transaction; a hook that fails is logged and cannot undo the change. The registry holds no HTTP
# clients, so mirrors (MLflow's aliases) are named here.
REGISTRY_DEPLOYMENT_HOOKS = ["retraining.services.mlflow_mirror.deployment_change_mirror_schedule"]

# --- MLflow, optional (retraining/services/mlflow_mirror.py): a mirror of runs, versions and aliases -----------
# Unset: nothing is sent and mlflow is never imported. Set: each training run, registered version and pointer change
# is mirrored by a Celery task (queue "default") after it commits; MLflow being down fails no run and no promotion.
MLFLOW_TRACKING_URI = env.str("MLFLOW_TRACKING_URI", default="")
MLFLOW_REGISTRY_URI = env.str("MLFLOW_REGISTRY_URI", default="") or MLFLOW_TRACKING_URI
MLFLOW_EXPERIMENT_NAME = env.str("MLFLOW_EXPERIMENT_NAME", default="recsite")
MLFLOW_REGISTERED_MODEL = env.str("MLFLOW_REGISTERED_MODEL", default="recsite-ranker")
if MLFLOW_TRACKING_URI and not (MLFLOW_EXPERIMENT_NAME.strip() and MLFLOW_REGISTERED_MODEL.strip()):
    raise ImproperlyConfigured("MLFLOW_EXPERIMENT_NAME and MLFLOW_REGISTERED_MODEL must not be blank")
# MLflow's client reads these from the environment. Its own defaults (120 s a request, 7 retries with exponential
# backoff) would hold a mirror for many minutes against a dead server; these bound one call to seconds.
for _name, _default, _least in (
    ("MLFLOW_HTTP_REQUEST_TIMEOUT", 5, 1),
    ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", 2, 0),
    ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", 1, 0),
):
    _value = env.int(_name, default=_default)
    if _value < _least:
        raise ImproperlyConfigured(f"{_name} must be an integer >= {_least}, got {_value}")
    os.environ[_name] = str(_value)


def _seconds(name: str, default: float) -> float:
    value = env.float(name, default=default)
    if value < 0:
        raise ImproperlyConfigured(f"{name} must be >= 0 seconds, got {value}")
    return value


# How long a web process trusts a verified API key without reading it again: the revocation delay.
API_KEY_CACHE_SECONDS = _seconds("API_KEY_CACHE_SECONDS", 5.0)
# How long a web process trusts the user and item ids it read for ingestion (unknown ids are always read; the fold
# reads items' categories afresh: services.online_features).
INGEST_CACHE_SECONDS = _seconds("INGEST_CACHE_SECONDS", 30.0)

# How often each web process folds the event batches left waiting for the online features (a crash between an
# ingest's commit and its fold, or more waiting than a request folds): the bound on their features' lag. 0: never.
FOLD_SWEEP_SECONDS = _seconds("FOLD_SWEEP_SECONDS", 1.0)

# --- Input limits (recsite/parsers.py, recsite/errors.py): bad input is a JSON 4xx, never a 5xx -----------------
# A body may hold a full batch whose every record is near its limits (8 KiB each); a larger one is a 413.
DATA_UPLOAD_MAX_MEMORY_SIZE = env.int("MAX_REQUEST_BYTES", default=MAX_EVENTS_PER_REQUEST * 8192)
JSON_MAX_DEPTH = 32  # a request body nested deeper is a 400

# --- Throttling and load shedding (recommendations/throttling.py, recsite/shedding.py, gunicorn.conf.py) ------
# THROTTLE_RATES="ingest=N/m,serve=N/s,..." overrides some of these: per API key and scope (`admin` for the
# admin API), and `auth_failure` per client address. The defaults are far above what the benches send.
THROTTLE_RATE_DEFAULTS = {"ingest": "100000/min", "serve": "100000/min", "admin": "6000/min", "auth_failure": "30/min"}


def _throttle_rates(text: str) -> dict[str, str]:
    rates = dict(THROTTLE_RATE_DEFAULTS)
    for part in filter(None, (part.strip() for part in text.split(","))):
        scope, _, rate = (side.strip() for side in part.partition("="))
        if scope not in rates or not re.fullmatch(r"\d+/(s|sec|m|min|h|hour|d|day)", rate):
            raise ImproperlyConfigured(
                f"THROTTLE_RATES: expected scope=N/period (scopes {', '.join(rates)}; period s, m, h or d), "
                f"got {part!r}"
            )
        rates[scope] = rate
    return rates


REST_FRAMEWORK["DEFAULT_THROTTLE_CLASSES"] = ["recommendations.throttling.ApiKeyRateThrottle"]
REST_FRAMEWORK["DEFAULT_THROTTLE_RATES"] = _throttle_rates(env.str("THROTTLE_RATES", default=""))
# Proxies in front that append to X-Forwarded-For (1 behind the TLS proxy, else 0); with 0 the header is ignored, so
# a client cannot forge its address to escape the auth_failure limit or the admin login lockout.
REST_FRAMEWORK["NUM_PROXIES"] = env.int("NUM_PROXIES", default=1 if BEHIND_TLS_PROXY else 0)
if REDIS_URL:  # a cache that does not answer must not hold requests: throttling fails open past this
    CACHES["default"]["OPTIONS"] = {"socket_connect_timeout": 0.25, "socket_timeout": 0.25}
# A request that waited longer than this for a gunicorn thread is answered 503 at once (0: never shed).
SHED_QUEUE_SECONDS = _seconds("SHED_QUEUE_SECONDS", 0.5)
# The same for events posted to /api/v1/events: their body has been sent (a batch's ~150 KB) and their clients are
# pipelines that want them stored rather than answered fast; with a few batch writers each batch waits for the
# others' 0.3-1 s of service, and 0.5 s refused 40-50% of the batches with nothing overloaded (bench/ingest.py).
SHED_EVENTS_QUEUE_SECONDS = _seconds("SHED_EVENTS_QUEUE_SECONDS", 2.0)

# --- Metrics (recsite/metrics*.py, README "Metrics") -------------------------------------------------------
# GET /metrics is served to a request with "Authorization: Bearer METRICS_TOKEN" or from an address in
# METRICS_ALLOWED_NETWORKS (CIDRs, comma-separated). Neither set: loopback only when local, nobody in production.
METRICS_TOKEN = env.str("METRICS_TOKEN", default="")


def _networks(name: str, default: list[str]) -> list:
    try:
        return [ip_network(cidr.strip(), strict=False) for cidr in env.list(name, default=default) if cidr.strip()]
    except ValueError as exc:
        raise ImproperlyConfigured(f"{name}: expected comma-separated CIDRs such as 10.0.0.0/8, got {exc}") from exc


METRICS_ALLOWED_NETWORKS = _networks(
    "METRICS_ALLOWED_NETWORKS", ["127.0.0.0/8", "::1/128"] if DEBUG or not _HTTPS else []
)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
