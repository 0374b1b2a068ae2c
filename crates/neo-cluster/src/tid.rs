//! TIDs are timestamps (architecture.md §0.1): the high 32 bits count
//! minutes since 1900 in a mixed radix, the low 32 bits the seconds within
//! the minute in units of 60/2^32 s. This module converts between wall-clock
//! time and TIDs and generates TIDs for the master (§6.12). It never reads
//! the clock: callers pass the time in.

use neo_proto::Tid;
pub use neo_proto::UnixTime;

/// A calendar date and time in UTC.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DateTime {
    /// Full year (e.g. 2026).
    pub year: i64,
    /// 1 ..= 12.
    pub month: u32,
    /// 1 ..= 31.
    pub day: u32,
    /// 0 ..= 23.
    pub hour: u32,
    /// 0 ..= 59.
    pub minute: u32,
    /// 0 ≤ second < 60 (fractional).
    pub second: f64,
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
pub fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    // Count years from March so that the leap day ends the year.
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year =
        (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146097 + day_of_era - 719468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719468;
    let era = days.div_euclid(146097);
    let day_of_era = days - era * 146097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    (days_from_civil(next_year, next_month, 1) - days_from_civil(year, month, 1)) as u32
}

impl DateTime {
    /// The UTC date and time of a Unix timestamp.
    pub fn from_unix(time: UnixTime) -> DateTime {
        let seconds = time.floor();
        let fraction = time - seconds;
        let seconds = seconds as i64;
        let (year, month, day) = civil_from_days(seconds.div_euclid(86400));
        let in_day = seconds.rem_euclid(86400);
        DateTime {
            year,
            month,
            day,
            hour: (in_day / 3600) as u32,
            minute: (in_day / 60 % 60) as u32,
            second: (in_day % 60) as f64 + fraction,
        }
    }

    /// The Unix timestamp of this date and time.
    pub fn to_unix(&self) -> UnixTime {
        let days = days_from_civil(self.year, self.month, self.day);
        (days * 86400 + i64::from(self.hour) * 3600 + i64::from(self.minute) * 60) as f64
            + self.second
    }
}

/// Low-32-bit units per second.
const UNITS_PER_SECOND: f64 = 4294967296.0 / 60.0;

/// The TID of a date and time (ZODB's `TimeStamp` encoding). Dates before
/// 1900 map to `Tid::ZERO`.
pub fn tid_from_datetime(when: &DateTime) -> Tid {
    let years = when.year - 1900;
    if years < 0 {
        return Tid::ZERO;
    }
    let minutes = (((years * 12 + i64::from(when.month) - 1) * 31 + i64::from(when.day) - 1) * 24
        + i64::from(when.hour))
        * 60
        + i64::from(when.minute);
    let high = u64::try_from(minutes).unwrap_or(0).min(u64::from(u32::MAX));
    // Clamping absorbs leap seconds and rounding up to 60 s.
    let low = (when.second * UNITS_PER_SECOND).clamp(0.0, f64::from(u32::MAX)) as u64;
    Tid(high << 32 | low)
}

/// The TID of a Unix timestamp.
pub fn tid_from_unix(time: UnixTime) -> Tid {
    tid_from_datetime(&DateTime::from_unix(time))
}

/// The fields a TID encodes, as stored: the calendar fields may name an
/// impossible date (30 February); `low` counts 60/2^32 s within the minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TidFields {
    /// Full year.
    pub year: i64,
    /// 1 ..= 12.
    pub month: u32,
    /// 1 ..= 31.
    pub day: u32,
    /// 0 ..= 23.
    pub hour: u32,
    /// 0 ..= 59.
    pub minute: u32,
    /// The low 32 bits.
    pub low: u32,
}

/// Splits a TID into its fields, without checking the date.
pub fn tid_fields(tid: Tid) -> TidFields {
    let high = tid.0 >> 32;
    let hours = high / 60;
    let days = hours / 24;
    let months = days / 31;
    TidFields {
        year: (months / 12) as i64 + 1900,
        month: (months % 12) as u32 + 1,
        day: (days % 31) as u32 + 1,
        hour: (hours % 24) as u32,
        minute: (high % 60) as u32,
        low: tid.0 as u32,
    }
}

/// The date and time a TID encodes, if it is a valid date.
pub fn datetime_of_tid(tid: Tid) -> Option<DateTime> {
    let fields = tid_fields(tid);
    if fields.day > days_in_month(fields.year, fields.month) {
        return None;
    }
    Some(DateTime {
        year: fields.year,
        month: fields.month,
        day: fields.day,
        hour: fields.hour,
        minute: fields.minute,
        second: f64::from(fields.low) / UNITS_PER_SECOND,
    })
}

/// `tid + offset` in low-word units, carrying into the calendar minute with
/// real date arithmetic so the result stays a valid date (NEO/py's `addTID`).
/// Falls back to integer addition for TIDs that are not valid dates.
pub fn add_tid(tid: Tid, offset: u64) -> Tid {
    let low = (tid.0 & 0xffff_ffff) + offset;
    if low <= u64::from(u32::MAX) {
        return Tid((tid.0 & !0xffff_ffff) | low);
    }
    let Some(when) = datetime_of_tid(Tid(tid.0 & !0xffff_ffff)) else {
        return Tid(tid.0.saturating_add(offset));
    };
    let carry_minutes = low >> 32;
    let base = DateTime {
        second: 0.0,
        ..when
    };
    let moved = DateTime::from_unix(base.to_unix() + carry_minutes as f64 * 60.0);
    let high = tid_from_datetime(&DateTime {
        second: 0.0,
        ..moved
    })
    .0;
    Tid(high | (low & 0xffff_ffff))
}

/// Generates TIDs that strictly increase even when the clock goes backwards
/// (architecture.md §6.12).
#[derive(Debug, Default)]
pub struct TidGenerator;

impl TidGenerator {
    /// A new TID for the clock reading `now`, greater than `last_used` (the
    /// greatest TID or TTID handed out or committed). With `ttid`, the TID is
    /// also `≥ ttid` and in the same partition (`tid ≡ ttid mod partitions`).
    pub fn next(now: UnixTime, last_used: Tid, ttid: Option<Tid>, partitions: u32) -> Tid {
        let mut tid = tid_from_unix(now);
        if tid <= last_used {
            if ttid == Some(last_used) {
                // Clock behind: the TTID itself is a valid final TID.
                return last_used;
            }
            tid = add_tid(last_used, 1);
        }
        let Some(ttid) = ttid else {
            return tid;
        };
        let partitions = u64::from(partitions.max(1));
        let target = ttid.0 % partitions;
        let current = tid.0 % partitions;
        // Move down to the TTID's partition, then up by whole rounds until
        // the TID is new again.
        let mut adjusted = tid.0 - current + target;
        while adjusted <= last_used.0 || adjusted < ttid.0 {
            adjusted += partitions;
        }
        Tid(adjusted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tid_of_a_known_date() {
        // 2026-11-26 00:00:30 UTC
        let when = DateTime {
            year: 2026,
            month: 11,
            day: 26,
            hour: 0,
            minute: 0,
            second: 30.0,
        };
        let tid = tid_from_datetime(&when);
        let minutes = ((((2026 - 1900) * 12 + 10) * 31 + 25) * 24) * 60;
        assert_eq!(tid.0 >> 32, minutes);
        assert_eq!(tid.0 & 0xffff_ffff, 1 << 31);
        assert_eq!(datetime_of_tid(tid), Some(when));
        assert_eq!(tid_from_unix(when.to_unix()), tid);
    }

    #[test]
    fn fixture_tids_decode_to_their_dates() {
        // A TID written by NEO/py (shared/vectors/neopy-sqlite) is a 2026 date.
        let when = datetime_of_tid(Tid(0x040d42f9cf453933)).expect("valid date");
        assert_eq!(when.year, 2026);
        assert_eq!(tid_from_datetime(&when), Tid(0x040d42f9cf453933));
        // 30 February is not a date.
        let february_30 = ((((2026 - 1900) * 12 + 1) * 31 + 29) * 24 * 60) << 32;
        assert_eq!(datetime_of_tid(Tid(february_30)), None);
    }

    #[test]
    fn add_tid_carries_into_valid_dates() {
        // 2026-02-28 23:59, last unit of the minute, + 1 → 2026-03-01 00:00.
        let end_of_february = tid_from_datetime(&DateTime {
            year: 2026,
            month: 2,
            day: 28,
            hour: 23,
            minute: 59,
            second: 0.0,
        });
        let last = Tid(end_of_february.0 | 0xffff_ffff);
        let next = add_tid(last, 1);
        let when = datetime_of_tid(next).expect("valid date");
        assert_eq!(
            (when.year, when.month, when.day, when.hour, when.minute),
            (2026, 3, 1, 0, 0)
        );
        assert!(next > last);
    }

    #[test]
    fn clock_going_backwards_still_gives_increasing_tids() {
        let now = 1_790_000_000.0;
        let first = TidGenerator::next(now, Tid::ZERO, None, 12);
        let second = TidGenerator::next(now - 3600.0, first, None, 12);
        assert!(second > first);
        let final_tid = TidGenerator::next(now - 7200.0, second, Some(second), 12);
        assert_eq!(final_tid, second, "clock behind: the TTID is reused");
    }

    proptest! {
        #[test]
        fn final_tids_are_new_and_in_the_ttid_partition(
            now in 1_600_000_000.0f64..1_900_000_000.0,
            skew in -100_000.0f64..100_000.0,
            partitions in 1u32..1000,
            gap in 0u64..1_000_000,
        ) {
            let ttid = TidGenerator::next(now, Tid::ZERO, None, partitions);
            let last_used = Tid(ttid.0 + gap);
            let tid = TidGenerator::next(now + skew, last_used, Some(ttid), partitions);
            prop_assert!(tid >= ttid);
            prop_assert!(tid > last_used || tid == ttid && ttid == last_used);
            prop_assert_eq!(tid.0 % u64::from(partitions), ttid.0 % u64::from(partitions));
        }

        #[test]
        fn dates_round_trip(time in -2_000_000_000i64..4_000_000_000) {
            let when = DateTime::from_unix(time as f64);
            prop_assert_eq!(when.to_unix(), time as f64);
            prop_assert!(when.day <= days_in_month(when.year, when.month));
        }
    }
}
