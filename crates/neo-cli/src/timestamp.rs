//! TIDs and UNIX times as text: NEO prints TIDs as the UTC instant they
//! encode (protocol.md §5.3) and node identification times as UTC dates, both
//! in Python's `str(datetime)` form, `YYYY-MM-DD HH:MM:SS[.ffffff]`.
//!
//! Calendar arithmetic is done by hand (days since the epoch ↔ civil date)
//! so the crate needs no date library.

use neo_cluster::{civil_from_days, days_from_civil, tid_fields};
use neo_proto::Tid;

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;

/// A UTC instant broken into its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    minute: u32,
    second: u32,
    micros: u32,
}

impl std::fmt::Display for DateTime {
    /// Python's `str(datetime)`: the fraction only when not zero.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
            self.year, self.month, self.day, self.hour, self.minute, self.second
        )?;
        if self.micros != 0 {
            write!(f, ".{:06}", self.micros)?;
        }
        Ok(())
    }
}

/// The instant `micros` microseconds after the epoch.
fn from_unix_micros(micros: i64) -> DateTime {
    let seconds = micros.div_euclid(MICROS_PER_SECOND);
    let days = seconds.div_euclid(SECONDS_PER_DAY);
    let in_day = seconds.rem_euclid(SECONDS_PER_DAY);
    let (year, month, day) = civil_from_days(days);
    DateTime {
        year,
        month,
        day,
        hour: (in_day / 3600) as u32,
        minute: (in_day / 60 % 60) as u32,
        second: (in_day % 60) as u32,
        micros: micros.rem_euclid(MICROS_PER_SECOND) as u32,
    }
}

/// The UTC date a TID encodes, as NEO prints it (`1900-01-01 00:00:00`
/// for TID 0). The fraction of the second is truncated to microseconds.
pub fn tid_datetime(tid: Tid) -> String {
    let f = tid_fields(tid);
    // low / 2^32 of a minute; below 60 s, so no carry into the minute.
    let micros = ((u128::from(f.low) * 60 * 1_000_000) >> 32) as i64;
    // Going through day counts also normalises impossible dates (31 Feb).
    let start = (days_from_civil(f.year, f.month, 1) + i64::from(f.day) - 1) * SECONDS_PER_DAY
        + i64::from(f.hour) * 3600
        + i64::from(f.minute) * 60;
    from_unix_micros(start * MICROS_PER_SECOND + micros).to_string()
}

/// A UNIX time (float seconds) as a UTC date, the way Python's
/// `datetime.utcfromtimestamp` rounds it (half to even on microseconds).
pub fn unix_datetime(seconds: f64) -> String {
    if !seconds.is_finite() {
        return seconds.to_string();
    }
    let whole = seconds.floor();
    let fraction = ((seconds - whole) * 1e6).round_ties_even() as i64;
    from_unix_micros(whole as i64 * MICROS_PER_SECOND + fraction).to_string()
}

/// The TID of a UNIX time (UTC): minutes since 1900 in the high 32 bits,
/// the seconds within the minute scaled to 2^32 (truncated) in the low
/// ones. `None` outside the years a TID can encode.
pub fn tid_from_unix(seconds: f64) -> Option<Tid> {
    // TIDs start in 1900 and their minute count must fit 32 bits.
    const FIRST: f64 = -2_208_988_800.0;
    const LAST: f64 = FIRST + 4_294_967_295.0 * 60.0;
    if !seconds.is_finite() || !(FIRST..LAST).contains(&seconds) {
        return None;
    }
    Some(neo_cluster::tid_from_unix(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tids_print_as_observed() {
        assert_eq!(tid_datetime(Tid(0)), "1900-01-01 00:00:00");
        assert_eq!(
            tid_datetime(Tid(0x040d42d5afed5c12)),
            "2026-11-25 21:41:41.232934"
        );
        assert_eq!(
            tid_datetime(Tid(0x040d42d5c02149d3)),
            "2026-11-25 21:41:45.030476"
        );
        assert_eq!(
            tid_datetime(Tid(0x040d42d9b1104926)),
            "2026-11-25 21:45:41.499285"
        );
        assert_eq!(
            tid_datetime(Tid(0x3937af2eeeeeeee)),
            "2012-01-01 12:34:55.999999"
        );
    }

    #[test]
    fn unix_times_convert_both_ways() {
        assert_eq!(tid_from_unix(1325421296.0), Some(Tid(0x3937af2eeeeeeee)));
        assert_eq!(tid_from_unix(-2208988800.0), Some(Tid(0)));
        assert_eq!(tid_from_unix(-2208988801.0), None);
        assert_eq!(tid_from_unix(f64::NAN), None);
        assert_eq!(unix_datetime(1325421296.0), "2012-01-01 12:34:56");
        assert_eq!(
            unix_datetime(1795642857.585259),
            "2026-11-25 21:40:57.585259"
        );
        assert_eq!(unix_datetime(0.0), "1970-01-01 00:00:00");
    }

    #[test]
    fn calendar_round_trips() {
        for days in [-25567, -1, 0, 59, 60, 365, 11016, 20000, 2932896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-25567), (1900, 1, 1));
    }
}
