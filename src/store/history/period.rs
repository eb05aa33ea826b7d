//! Partition periods: where a period starts, the next one, a partition's name,
//! and reading a partition's bounds back from the catalog.

use chrono::{Datelike, Duration, NaiveDate, NaiveDateTime};

pub use crate::config::Period;

impl Period {
    /// The start of the period holding `t` (UTC).
    pub fn start(self, t: NaiveDateTime) -> NaiveDateTime {
        let date = t.date();
        let first = match self {
            Self::Day => date,
            Self::Week => date - Duration::days(i64::from(date.weekday().num_days_from_monday())),
            Self::Month => date.with_day(1).expect("every month has a first day"),
        };
        first.and_hms_opt(0, 0, 0).expect("midnight exists")
    }

    /// The start of the period after the one starting at `start`.
    pub fn next(self, start: NaiveDateTime) -> NaiveDateTime {
        match self {
            Self::Day => start + Duration::days(1),
            Self::Week => start + Duration::days(7),
            Self::Month => {
                let date = start.date();
                let (year, month) = if date.month() == 12 {
                    (date.year() + 1, 1)
                } else {
                    (date.year(), date.month() + 1)
                };
                NaiveDate::from_ymd_opt(year, month, 1)
                    .expect("the first of a month exists")
                    .and_hms_opt(0, 0, 0)
                    .expect("midnight exists")
            }
        }
    }

    /// `clusters_checkins_p20261130`, `…_w20261130`, `…_m202611`.
    pub fn partition_name(self, start: NaiveDateTime) -> String {
        match self {
            Self::Day => format!("clusters_checkins_p{}", start.format("%Y%m%d")),
            Self::Week => format!("clusters_checkins_w{}", start.format("%Y%m%d")),
            Self::Month => format!("clusters_checkins_m{}", start.format("%Y%m")),
        }
    }
}

/// The (lower, upper) of `FOR VALUES FROM (…) TO (…)`; `None` for MINVALUE /
/// MAXVALUE (or anything else).
pub fn parse_bound(expression: &str) -> (Option<NaiveDateTime>, Option<NaiveDateTime>) {
    let value = |part: &str| {
        let quoted = part.split('\'').nth(1)?;
        NaiveDateTime::parse_from_str(quoted, "%Y-%m-%d %H:%M:%S%.f").ok()
    };
    match expression.split_once(" TO ") {
        Some((from, to)) => (value(from), value(to)),
        None => (None, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> NaiveDateTime {
        NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S").unwrap()
    }

    #[test]
    fn periods_start_at_midnight_monday_and_the_first() {
        let t = at("2026-11-25 13:45:00"); // a Wednesday
        assert_eq!(Period::Day.start(t), at("2026-11-25 00:00:00"));
        assert_eq!(Period::Week.start(t), at("2026-11-23 00:00:00"));
        assert_eq!(Period::Month.start(t), at("2026-11-01 00:00:00"));
        assert_eq!(
            Period::Month.next(at("2026-12-01 00:00:00")),
            at("2027-01-01 00:00:00")
        );
        assert_eq!(
            Period::Week.next(at("2026-11-23 00:00:00")),
            at("2026-11-30 00:00:00")
        );
    }

    #[test]
    fn names_sort_as_their_periods() {
        assert_eq!(
            Period::Day.partition_name(at("2026-11-30 00:00:00")),
            "clusters_checkins_p20261130"
        );
        assert_eq!(
            Period::Month.partition_name(at("2026-11-01 00:00:00")),
            "clusters_checkins_m202611"
        );
    }

    #[test]
    fn bounds_are_read_back_from_the_catalog() {
        assert_eq!(
            parse_bound("FOR VALUES FROM ('2026-11-30 00:00:00') TO ('2026-12-01 00:00:00')"),
            (
                Some(at("2026-11-30 00:00:00")),
                Some(at("2026-12-01 00:00:00"))
            )
        );
        assert_eq!(
            parse_bound("FOR VALUES FROM (MINVALUE) TO ('2026-12-01 00:00:00')"),
            (None, Some(at("2026-12-01 00:00:00")))
        );
    }
}
