"""Settings from the environment: nonsense is refused at start, naming the variable."""

from __future__ import annotations

import pytest

from recsys_online.factors import FactorParams
from streamer.settings import Settings, SettingsError


def test_values_are_read_and_typed_by_name() -> None:
    settings = Settings.from_env({"RECSYS_K": "20", "RECSYS_REFRESH_EVERY_S": "0.5"})
    assert (settings.k, settings.refresh_every_s) == (20, 0.5)


def test_the_factors_learning_settings_default_to_the_cores_and_are_read() -> None:
    defaults, params = Settings(), FactorParams()
    for name in ("lr_bias", "lr_factor", "l2_bias", "l2_factor", "adaptive"):
        assert getattr(defaults, name) == getattr(params, name), name
    env = {"RECSYS_LR_FACTOR": "0.05", "RECSYS_L2_BIAS": "0", "RECSYS_ADAPTIVE": "false"}
    settings = Settings.from_env(env)
    assert (settings.lr_factor, settings.l2_bias, settings.adaptive) == (0.05, 0.0, False)


@pytest.mark.parametrize(
    ("raw", "value"), [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False)]
)
def test_a_switch_reads_its_usual_spellings(raw: str, value: bool) -> None:
    """(``bool("false")`` is True: a switch is not read by its type's constructor.)"""
    assert Settings.from_env({"RECSYS_REDIS_CLUSTER": raw}).redis_cluster is value


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RECSYS_RATING_HIGH": "inf"}, "RECSYS_RATING_HIGH must be a finite number"),
        ({"RECSYS_LEARN_WINDOW_S": "nan"}, "RECSYS_LEARN_WINDOW_S must be a finite number"),
        ({"RECSYS_RELEVANT": "99"}, "RECSYS_RELEVANT must be within the rating scale"),
        ({"RECSYS_METRICS_WINDOW": "0"}, "RECSYS_METRICS_WINDOW must be >= 1"),
        ({"RECSYS_MAX_PAYLOAD_BYTES": "-1"}, "RECSYS_MAX_PAYLOAD_BYTES must be >= 1"),
        ({"RECSYS_RECS_TTL_S": "0"}, "RECSYS_RECS_TTL_S must be >= 1"),
        ({"RECSYS_REFRESH_EVERY_S": "0"}, "RECSYS_REFRESH_EVERY_S must be > 0"),
        ({"RECSYS_SESSION_TIMEOUT_S": "-1"}, "RECSYS_SESSION_TIMEOUT_S must be > 0"),
        ({"RECSYS_BATCH_WITHIN_S": "-1"}, "RECSYS_BATCH_WITHIN_S must be >= 0"),
        ({"RECSYS_DEDUPE_WINDOW": "-5"}, "RECSYS_DEDUPE_WINDOW must be >= 0"),
        ({"RECSYS_RATINGS_TOPIC": " "}, "RECSYS_RATINGS_TOPIC must not be empty"),
        ({"RECSYS_BROKERS": ""}, "RECSYS_BROKERS must not be empty"),
        ({"RECSYS_RATINGS_TOPIC": "recsys.items"}, "distinct names"),
        ({"RECSYS_K": "many"}, "RECSYS_K: 'many' is not a valid int"),
        ({"RECSYS_REDIS_CLUSTER": "maybe"}, "RECSYS_REDIS_CLUSTER: 'maybe' is not a valid bool"),
        ({"RECSYS_WEB_PORT": "70000"}, "RECSYS_WEB_PORT must be a port, 0-65535"),
        ({"RECSYS_DASHBOARD_PORT": "-1"}, "RECSYS_DASHBOARD_PORT must be a port, 0-65535"),
        ({"RECSYS_FRESH_EVAL_SHARE": "1.5"}, "RECSYS_FRESH_EVAL_SHARE must be between 0 and 1"),
        # Values that passed, then stopped the worker (numpy, Faust, Kafka, CPython refuse):
        ({"RECSYS_SEED": "-1"}, "RECSYS_SEED must be >= 0"),
        ({"RECSYS_N_FACTORS": "100000"}, "RECSYS_N_FACTORS must be 1 to 1024"),
        ({"RECSYS_N_FACTORS": "0"}, "RECSYS_N_FACTORS must be 1 to 1024"),
        ({"RECSYS_LR_FACTOR": "-0.1"}, "RECSYS_LR_FACTOR must be >= 0"),
        ({"RECSYS_LR_BIAS": "nan"}, "RECSYS_LR_BIAS must be a finite number"),
        ({"RECSYS_L2_FACTOR": "-1"}, "RECSYS_L2_FACTOR must be >= 0"),
        ({"RECSYS_L2_BIAS": "inf"}, "RECSYS_L2_BIAS must be a finite number"),
        ({"RECSYS_ADAPTIVE": "adagrad"}, "RECSYS_ADAPTIVE: 'adagrad' is not a valid bool"),
        ({"RECSYS_SESSION_TIMEOUT_S": "90.5"}, "RECSYS_SESSION_TIMEOUT_S must be 6 to 90"),
        ({"RECSYS_SESSION_TIMEOUT_S": "2"}, "RECSYS_SESSION_TIMEOUT_S must be 6 to 90"),
        ({"RECSYS_FETCH_MAX_WAIT_MS": "90000"}, "RECSYS_FETCH_MAX_WAIT_MS must be at most"),
        ({"RECSYS_GC_YOUNG": str(2**31)}, "RECSYS_GC_YOUNG must be below 2"),
        ({"RECSYS_FETCH_PARTITION_BYTES": str(2**31)}, "RECSYS_FETCH_PARTITION_BYTES must be"),
        ({"REDIS_URL": "localhost:6379"}, "REDIS_URL: 'localhost:6379' is not a Redis URL"),
        # Values that passed, then failed with a traceback in a command or the worker:
        ({"RECSYS_BROKERS": "h:notaport"}, "RECSYS_BROKERS: 'h:notaport' is not host or"),
        ({"RECSYS_BROKERS": "h:9092,"}, "RECSYS_BROKERS: '' is not host or host:port"),
        ({"REDIS_URL": "redis://h:notaport/0"}, "Port could not be cast to integer"),
        ({"REDIS_URL": "redis://h:1/0?bogus=1"}, "unexpected keyword argument 'bogus'"),
        ({"REDIS_URL": "redis://h:6379/abc"}, "the database after the address must be a"),
        ({"RECSYS_ITEMS_TOPIC": "recsys_ratings"}, "distinct names, '.' and '_' alike"),
        ({"RECSYS_USERS_TOPIC": "bad topic/name"}, "RECSYS_USERS_TOPIC: 'bad topic/name' is"),
        ({"RECSYS_DEADLETTER_TOPIC": ".."}, "RECSYS_DEADLETTER_TOPIC: '..' is not a Kafka"),
        ({"RECSYS_DEADLETTER_TOPIC": "d" * 250}, "is not a Kafka topic name"),
        ({"RECSYS_REDIS_URL": ""}, "REDIS_URL: '' is not a Redis URL"),
        # The variable named is the one set (an alias, or ours), and an empty switch is
        # refused, not read as false (RECSYS_ADAPTIVE defaults to true):
        ({"KAFKA_BOOTSTRAP_SERVERS": "b:90922"}, "KAFKA_BOOTSTRAP_SERVERS: 'b:90922' is not"),
        ({"KAFKA_BOOTSTRAP_SERVERS": " "}, "KAFKA_BOOTSTRAP_SERVERS must not be empty"),
        # Set but empty (a `$UNSET` in a script) is refused, not read as localhost:
        ({"KAFKA_BOOTSTRAP_SERVERS": ""}, "KAFKA_BOOTSTRAP_SERVERS must not be empty"),
        ({"REDIS_URL": ""}, "REDIS_URL: '' is not a Redis URL"),
        ({"RECSYS_REDIS_URL": "http://c:6379"}, "RECSYS_REDIS_URL: 'http://c:6379' is not a"),
        ({"RECSYS_ADAPTIVE": ""}, "RECSYS_ADAPTIVE: '' is not a valid bool"),
        ({"RECSYS_RATING_HIGH": "1e38"}, "RECSYS_RATING_HIGH must be within [+]-1e6"),
        ({"RECSYS_SIMILAR_CONTENT_WEIGHT": "1e39"}, "RECSYS_SIMILAR_CONTENT_WEIGHT must be at"),
        (
            {"REDIS_URL": "redis://a:6379/0", "RECSYS_REDIS_URL": "redis://b:6379/0"},
            "REDIS_URL and RECSYS_REDIS_URL are both set, to different values",
        ),
        (
            {"KAFKA_BOOTSTRAP_SERVERS": "a:9092", "RECSYS_BROKERS": "b:9092"},
            "KAFKA_BOOTSTRAP_SERVERS and RECSYS_BROKERS are both set",
        ),
    ],
)
def test_nonsense_is_refused_at_start(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        Settings.from_env(env)


def test_a_misspelt_setting_is_reported_not_silently_ignored() -> None:
    with pytest.warns(UserWarning, match="unknown settings ignored: RECSYS_BATCHMAX"):
        settings = Settings.from_env({"RECSYS_BATCHMAX": "5", "RECSYS_STATE_DIR": "/tmp"})
    assert settings.batch_max == Settings().batch_max


def test_secured_kafka_settings_that_cannot_work_are_refused_at_start(tmp_path) -> None:
    env = {"RECSYS_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RECSYS_KAFKA_SASL_USERNAME": "a"}
    with pytest.raises(SettingsError, match="RECSYS_KAFKA_SASL_PASSWORD are needed"):
        Settings.from_env(env)
    env = {"RECSYS_KAFKA_SECURITY_PROTOCOL": "SSL", "RECSYS_KAFKA_SSL_CAFILE": str(tmp_path)}
    with pytest.raises(SettingsError, match="RECSYS_KAFKA_SSL_CAFILE: no file"):
        Settings.from_env(env)
    with pytest.raises(SettingsError, match="must be one of PLAIN, SCRAM-SHA-256"):
        Settings.from_env({"RECSYS_KAFKA_SASL_MECHANISM": "GSSAPI"})
    with pytest.raises(SettingsError, match="does not use TLS"):
        Settings.from_env({"RECSYS_KAFKA_SSL_CAFILE": __file__})
    with pytest.raises(SettingsError, match="go together"):
        Settings.from_env(
            {"RECSYS_KAFKA_SECURITY_PROTOCOL": "SSL", "RECSYS_KAFKA_SSL_CERTFILE": __file__}
        )
    # A file that is no PEM bundle is said at start, in one line, not at the first client.
    env = {"RECSYS_KAFKA_SECURITY_PROTOCOL": "SSL", "RECSYS_KAFKA_SSL_CAFILE": __file__}
    with pytest.raises(SettingsError, match="cannot be used"):
        Settings.from_env(env)


def test_a_redis_password_is_never_in_a_settings_error() -> None:
    for url in (
        "redis//:s3cret@h:6379/0",
        "rediss:/:s3cret@h",
        "redis://:s3cret@h:x/0",
        "redis://:s3c/ret@h:6379/0",
        "redis://:s3c#ret@h:6379/0",
        "redis+sentinel://:s3c/ret@h1:26379/m/0",
    ):
        with pytest.raises(ValueError) as caught:
            Settings.from_env({"REDIS_URL": url})
        message = str(caught.value)
        assert "s3c" not in message and "ret@" not in message and "REDIS_URL" in message


def test_the_sasl_password_is_never_in_a_settings_repr() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="app",
        kafka_sasl_password="s3cret-pw",
    )
    assert "s3cret-pw" not in repr(settings) and "app" in repr(settings)
    assert settings.kafka_security()["sasl_plain_password"] == "s3cret-pw"


def test_a_sentinel_url_that_cannot_work_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"REDIS_URL: .*name the master the sentinels watch"):
        Settings.from_env({"REDIS_URL": "redis+sentinel://127.0.0.1:26379/"})
    with pytest.raises(ValueError, match=r"RECSYS_REDIS_CLUSTER with a redis\+sentinel"):
        Settings.from_env(
            {"REDIS_URL": "redis+sentinel://h/recsys/0", "RECSYS_REDIS_CLUSTER": "true"}
        )
