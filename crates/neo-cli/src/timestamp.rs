//! TIDs and UNIX times as text: NEO prints TIDs as the UTC instant they
//! encode (protocol.md §5.3) and node identification times as UTC dates, both
//! in Python's `str(datetime)` form, `YYYY-MM-DD HH:MM:SS[.ffffff]`.
//!
//! Calendar arithmetic is done by hand (days since the epoch ↔ civil date)
//! so the crate needs no date library.

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

/// Days since 1970-01-01 of a civil date (proleptic Gregorian).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let day_of_year = (153 * (month + if month > 2 { -3 } else { 9 }) + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Civil date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
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
    let high = tid.0 >> 32;
    let low = tid.0 & 0xffff_ffff;
    let minute = (high % 60) as u32;
    let hours = high / 60;
    let hour = (hours % 24) as u32;
    let days = hours / 24;
    let day = (days % 31) as u32 + 1;
    let months = days / 31;
    let month = (months % 12) as u32 + 1;
    let year = (months / 12) as i64 + 1900;
    // low / 2^32 of a minute; below 60 s, so no carry into the minute.
    let micros = ((u128::from(low) * 60 * 1_000_000) >> 32) as i64;
    // Going through day counts also normalises impossible dates (31 Feb).
    let start = (days_from_civil(year, month, 1) + i64::from(day) - 1) * SECONDS_PER_DAY
        + i64::from(hour) * 3600
        + i64::from(minute) * 60;
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
    if !seconds.is_finite() {
        return None;
    }
    let whole_minutes = (seconds / 60.0).floor();
    if whole_minutes.abs() > 1e12 {
        return None;
    }
    let minutes = whole_minutes as i64;
    let in_minute = seconds - whole_minutes * 60.0;
    let days = minutes.div_euclid(24 * 60);
    let (year, month, day) = civil_from_days(days);
    if year < 1900 {
        return None;
    }
    let minute_of_day = minutes.rem_euclid(24 * 60);
    let high = ((((year - 1900) * 12 + i64::from(month) - 1) * 31 + i64::from(day) - 1) * 24
        + minute_of_day / 60)
        * 60
        + minute_of_day % 60;
    let high = u32::try_from(high).ok()?;
    let low = (in_minute / (60.0 / 4_294_967_296.0)).clamp(0.0, 4_294_967_295.0) as u64;
    Some(Tid(u64::from(high) << 32 | low))
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
