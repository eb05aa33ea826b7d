//! Integration tests: one binary, a module per capability, all against the local
//! PostgreSQL and RabbitMQ. Each test has its own database and broker names.

mod acknowledgements;
mod batching;
mod binary;
mod bootstrap;
mod broker_conditions;
mod checkins;
mod cluster;
mod dead_letter_routing;
mod dead_letters;
mod deduplication;
mod faults;
mod history;
mod hostile;
mod kubernetes;
mod memory;
mod operations;
mod publisher;
#[cfg(feature = "rds")]
mod rds;
mod readers;
mod rejections;
mod shutdown;
mod summaries;
mod support;
mod systemic;
mod tls;
mod topology;
#[cfg(feature = "otlp")]
mod traces;
mod versions;
