//! Validation of settings: each refusal names its variable.
use clap::Parser;

use super::*;
use crate::cli::{Cli, Command};

/// `wfm-worker run` with these flags (no environment involved).
fn run(flags: &[&str]) -> Result<Settings, ConfigError> {
    let mut argv = vec!["wfm-worker", "run"];
    argv.extend_from_slice(flags);
    let Command::Run(args) = Cli::try_parse_from(argv).unwrap().command else {
        unreachable!("parsed `run`");
    };
    args.validate()
}

fn refusal(flags: &[&str]) -> String {
    run(flags).unwrap_err().to_string()
}

#[test]
fn broker_settings_debug_never_shows_the_password() {
    let settings = run(&["--amqp-url", "amqp://user:s3cret@host:5672/%2f"]).unwrap();
    let shown = format!("{:?}", settings.broker);
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(shown.contains("user@host:5672"), "{shown}");
}

#[test]
fn unparseable_urls_name_the_variable_without_echoing_the_password() {
    for url in [
        "amqp://user:s3cret@host:notaport/",
        "amqp:user:s3cret@host/",
        "amqps://user:s3cret@[::1/",
        "http://user:s3cret@host/",
    ] {
        let shown = refusal(&["--amqp-url", url]);
        assert!(shown.starts_with("WFM_AMQP_URL"), "{shown}");
        assert!(!shown.contains("s3cret"), "{url}: {shown}");
    }
    for url in [
        "postgres://user:s3cret@host:notaport/db",
        "postgres://user:s3cret@host/db?nosuchoption=1",
        "host=db password=s3cret port=x",
        "postgres://user:s3cret@host/db?sslmode=sometimes",
    ] {
        let shown = refusal(&["--database-url", url]);
        assert!(shown.starts_with("WFM_DATABASE_URL"), "{shown}");
        assert!(!shown.contains("s3cret"), "{url}: {shown}");
    }
}

#[test]
fn the_urls_sslmode_is_honoured_when_the_variable_is_not_set() {
    let settings = run(&["--database-url", "postgres://u@db/wfm?sslmode=require"]).unwrap();
    assert_eq!(settings.database.ssl_mode, SslMode::Require);
    let settings = run(&["--database-url", "postgres://u@db/wfm"]).unwrap();
    assert_eq!(settings.database.ssl_mode, SslMode::Disable, "the default");
}

#[test]
fn the_urls_sslmode_and_the_variable_must_agree() {
    let url = "postgres://u@db/wfm?sslmode=require";
    let shown = refusal(&["--database-url", url, "--database-sslmode", "disable"]);
    assert!(
        shown.contains("WFM_DATABASE_SSLMODE") && shown.contains("sslmode in WFM_DATABASE_URL"),
        "{shown}"
    );
    let settings = run(&["--database-url", url, "--database-sslmode", "require"]).unwrap();
    assert_eq!(settings.database.ssl_mode, SslMode::Require);
}

#[test]
fn iam_auth_needs_verified_tls() {
    for mode in ["disable", "require"] {
        let shown = refusal(&[
            "--rds-iam-auth",
            "true",
            "--rds-instance-id",
            "db",
            "--database-sslmode",
            mode,
        ]);
        assert!(
            shown.contains("WFM_RDS_IAM_AUTH") && shown.contains("verify-full"),
            "{shown}"
        );
    }
}

const IAM_OVER_VERIFIED_TLS: [&str; 6] = [
    "--rds-iam-auth",
    "true",
    "--database-sslmode",
    "verify-full",
    "--database-ca-file",
    "/etc/rds.pem",
];

#[cfg(feature = "rds")]
#[test]
fn iam_auth_over_verified_tls_is_taken() {
    let settings = run(&IAM_OVER_VERIFIED_TLS).unwrap();
    assert!(settings.database.rds.unwrap().iam_auth);
}

#[cfg(not(feature = "rds"))]
#[test]
fn a_build_without_the_sdk_refuses_rds_settings_naming_the_feature() {
    for args in [&["--rds-instance-id", "db"][..], &IAM_OVER_VERIFIED_TLS] {
        let shown = refusal(args);
        assert!(
            shown.contains("WFM_RDS_INSTANCE_ID") && shown.contains("cargo feature `rds`"),
            "{shown}"
        );
    }
    assert!(run(&[]).unwrap().database.rds.is_none());
}

#[test]
fn prefetch_below_batch_size_is_refused() {
    let shown = refusal(&["--prefetch", "10", "--batch-size", "500"]);
    assert!(shown.starts_with("WFM_PREFETCH (10)"), "{shown}");
}

#[test]
fn a_batch_ends_at_a_size_in_bytes_too() {
    assert_eq!(run(&[]).unwrap().pipeline.batch_bytes, 256 * 1024);
    let set = run(&["--batch-bytes", "1MiB"]).unwrap().pipeline;
    assert_eq!(set.batch_bytes, 1024 * 1024);
    let shown = refusal(&["--batch-bytes", "0"]);
    assert!(
        shown.starts_with("WFM_BATCH_BYTES must not be zero"),
        "{shown}"
    );
}

#[test]
fn the_memory_limit_lowers_the_prefetch_so_that_the_largest_messages_fit() {
    let defaults = run(&[]).unwrap().pipeline;
    assert_eq!((defaults.prefetch, defaults.batch_size), (1000, 500));
    // 64 MiB for 2 queues of 1 MiB messages, each taking up to 4 MiB: 8 per queue.
    let tight = run(&["--memory-limit", "64MiB", "--max-message-bytes", "1048576"])
        .unwrap()
        .pipeline;
    assert_eq!((tight.prefetch, tight.batch_size), (8, 8));
    let shown = refusal(&["--memory-limit", "4MiB", "--max-message-bytes", "1048576"]);
    assert!(shown.starts_with("WFM_MEMORY_LIMIT"), "{shown}");
}

#[test]
fn values_that_could_overflow_are_bounded() {
    for (flag, value) in [
        ("--batch-linger-ms", "99999999999999"),
        ("--shutdown-timeout-secs", "0"),
        ("--max-json-depth", "100000"),
        ("--max-clock-skew", "3000d"),
        ("--pool-size", "0"),
    ] {
        let argv = ["wfm-worker", "run", flag, value];
        assert!(Cli::try_parse_from(argv).is_err(), "{flag} {value}");
    }
}

#[test]
fn postgres_description_has_no_password() {
    let config: tokio_postgres::Config = "postgres://u:pw@db:6543/wfm".parse().unwrap();
    assert_eq!(describe_postgres(&config), "u@db:6543/wfm");
}

#[test]
fn a_cluster_is_a_comma_separated_list_of_node_urls() {
    let settings = run(&[
        "--amqp-url",
        "amqp://u:p@a:5672/%2f, amqp://u:p@b:5673/%2f,amqps://u:p@c/%2f",
    ])
    .unwrap();
    let hosts: Vec<&str> = settings
        .broker
        .nodes
        .iter()
        .map(|n| n.authority.host.as_str())
        .collect();
    assert_eq!(hosts, ["a", "b", "c"]);
    let shown = refusal(&["--amqp-url", "amqp://u:s3cret@a/%2f,amqp:u:s3cret@b"]);
    assert!(
        shown.starts_with("WFM_AMQP_URL") && !shown.contains("s3cret"),
        "{shown}"
    );
}
