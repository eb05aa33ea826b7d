//! A build without the AWS SDK (cargo feature `rds` off): no token minter can
//! exist, so a pool never holds one, and the code that would use one stays
//! the same in both builds.

use tokio_postgres::Config;

use super::RdsError;
use crate::config::DatabaseSettings;

/// Has no values: without the SDK there is nothing to sign tokens with.
#[derive(Clone, Debug)]
pub enum IamAuth {}

impl IamAuth {
    pub async fn token(&self, _host: &str, _port: u16, _user: &str) -> Result<String, RdsError> {
        match *self {}
    }

    pub fn minted(&self) -> u64 {
        match *self {}
    }
}

/// Without the SDK there is nothing to resolve. Settings that ask for RDS are
/// refused when they are read ([`crate::config::ConfigError::RdsNotBuilt`]);
/// this catches settings made in code.
pub async fn resolve(settings: &DatabaseSettings) -> Result<(Config, Option<IamAuth>), RdsError> {
    match settings.rds {
        Some(_) => Err(RdsError::NotBuilt),
        None => Ok((settings.config.clone(), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_the_sdk_rds_settings_made_in_code_are_refused_too() {
        let mut settings = DatabaseSettings::plain("postgres://u@h/db".parse().unwrap(), 1);
        assert!(resolve(&settings).await.is_ok());
        settings.rds = Some(crate::config::RdsSettings {
            instance_id: Some("db".into()),
            region: None,
            iam_auth: false,
        });
        assert!(matches!(resolve(&settings).await, Err(RdsError::NotBuilt)));
    }
}
