//! A build without the AWS SDK (cargo feature `rds` off): no token minter can
//! exist, so a pool never holds one, and the code that would use one stays
//! the same in both builds.

use super::RdsError;

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
