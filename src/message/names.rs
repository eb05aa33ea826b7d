//! Domain newtypes. Their fields are private: the only way to get one is through
//! a parser that enforces the rule, so past `message/` an over-long name or a
//! cluster id that is not a UUID cannot exist.

use std::marker::PhantomData;

use uuid::Uuid;

use super::Rejection;

/// A cluster's identity: always a UUID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(Uuid);

impl ClusterId {
    pub fn parse(field: &str, text: &str) -> Result<Self, Rejection> {
        Uuid::parse_str(text)
            .map(Self)
            .map_err(|e| Rejection::invalid(format!("`{field}` is not a UUID: {e}")))
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

/// The rule a bounded text field obeys: its name on the wire and its length limit
/// in characters, counted as PostgreSQL counts `varchar(n)` (not bytes).
pub trait TextRule {
    const FIELD: &'static str;
    const MAX_CHARS: usize;
}

/// Non-empty text of at most `R::MAX_CHARS` characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BoundedText<R> {
    text: String,
    rule: PhantomData<R>,
}

impl<R: TextRule> BoundedText<R> {
    pub fn parse(text: Option<String>) -> Result<Self, Rejection> {
        let text = text.unwrap_or_default();
        if text.is_empty() {
            return Err(Rejection::invalid(format!(
                "`{}` is missing or empty",
                R::FIELD
            )));
        }
        let chars = text.chars().count();
        if chars > R::MAX_CHARS {
            return Err(Rejection::invalid(format!(
                "`{}` is {chars} characters, over the limit of {}",
                R::FIELD,
                R::MAX_CHARS
            )));
        }
        Ok(Self {
            text,
            rule: PhantomData,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

macro_rules! text_rule {
    ($rule:ident, $alias:ident, $field:literal, $max:literal) => {
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $rule {}
        impl TextRule for $rule {
            const FIELD: &'static str = $field;
            const MAX_CHARS: usize = $max;
        }
        #[doc = concat!("`", $field, "`: 1 to ", $max, " characters.")]
        pub type $alias = BoundedText<$rule>;
    };
}

text_rule!(ComponentRule, ComponentName, "component.name", 32);
text_rule!(TrainRule, TrainName, "version.train", 24);
text_rule!(VersionRule, VersionName, "version.version", 32);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_name_of_32_characters_is_accepted() {
        assert!(ComponentName::parse(Some("a".repeat(32))).is_ok());
    }

    #[test]
    fn component_name_of_33_characters_is_refused_naming_the_field() {
        let err = ComponentName::parse(Some("a".repeat(33))).unwrap_err();
        assert_eq!(
            err.reason,
            "`component.name` is 33 characters, over the limit of 32"
        );
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        // 24 two-byte characters: 48 bytes, but within varchar(24).
        assert!(TrainName::parse(Some("é".repeat(24))).is_ok());
        assert!(TrainName::parse(Some("é".repeat(25))).is_err());
    }

    #[test]
    fn empty_or_missing_text_is_refused() {
        assert!(VersionName::parse(Some(String::new())).is_err());
        let err = VersionName::parse(None).unwrap_err();
        assert_eq!(err.reason, "`version.version` is missing or empty");
    }

    #[test]
    fn cluster_id_must_be_a_uuid() {
        assert!(ClusterId::parse("id", "5e2a4d3c-6c1f-4f7e-9a3b-2f8e1c0d9b7a").is_ok());
        let err = ClusterId::parse("id", "not-a-uuid").unwrap_err();
        assert!(
            err.reason.starts_with("`id` is not a UUID"),
            "{}",
            err.reason
        );
    }
}
