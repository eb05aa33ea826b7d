//! Validation of settings: each refusal names its variable.
use super::*;

fn broker(url: &str) -> BrokerArgs {
    BrokerArgs {
        amqp_url: url.into(),
        amqp_ca_file: None,
        connection_name: "wfm-worker".into(),
        exchange: "x".into(),
        checkin_queue: "c".into(),
        version_queue: "v".into(),
        dead_letter_exchange: "d".into(),
        dead_letter_queue: "dq".into(),
    }
}

#[test]
fn broker_settings_debug_never_shows_the_password() {
    let settings = broker("amqp://user:s3cret@host:5672/%2f")
        .validate()
        .unwrap();
    let shown = format!("{settings:?}");
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("user@host:5672"), "{shown}");
}

#[test]
fn unparseable_amqp_url_names_the_variable_without_echoing_it() {
    let err = broker("amqp://user:s3cret@host:notaport/")
        .validate()
        .unwrap_err();
    let shown = err.to_string();
    assert!(shown.starts_with("WFM_AMQP_URL"), "{shown}");
    assert!(!shown.contains("s3cret"), "{shown}");
}

#[test]
fn zero_pool_size_is_refused_naming_the_variable() {
    let args = DatabaseArgs {
        database_url: "postgres://postgres@localhost/wfm".into(),
        pool_size: 0,
        database_sslmode: SslMode::Disable,
        database_ca_file: None,
        rds_instance_id: None,
        rds_region: None,
        rds_iam_auth: false,
    };
    assert_eq!(
        args.validate().unwrap_err().to_string(),
        "WFM_POOL_SIZE must not be zero or empty"
    );
}

#[test]
fn iam_auth_without_tls_is_refused_naming_the_variables() {
    let args = DatabaseArgs {
        database_url: "postgres://wfm@db/wfm".into(),
        pool_size: 4,
        database_sslmode: SslMode::Disable,
        database_ca_file: None,
        rds_instance_id: Some("db".into()),
        rds_region: None,
        rds_iam_auth: true,
    };
    let shown = args.validate().unwrap_err().to_string();
    assert!(
        shown.contains("WFM_RDS_IAM_AUTH") && shown.contains("WFM_DATABASE_SSLMODE"),
        "{shown}"
    );
}

#[test]
fn prefetch_below_batch_size_is_refused() {
    let args = PipelineArgs {
        prefetch: 10,
        batch_size: 500,
        batch_linger_ms: 5,
        max_message_bytes: 1,
        max_json_depth: 64,
        max_clock_skew: Duration::from_secs(300),
        max_deliveries: 5,
        shutdown_timeout_secs: 30,
    };
    assert!(matches!(
        args.validate(),
        Err(ConfigError::PrefetchBelowBatch { .. })
    ));
}

#[test]
fn postgres_description_has_no_password() {
    let config: tokio_postgres::Config = "postgres://u:pw@db:6543/wfm".parse().unwrap();
    assert_eq!(describe_postgres(&config), "u@db:6543/wfm");
}
