//! `daily-weekly-cron`: when to back up next, in a time zone. Config, one of:
//! - `{"daily": "02:30"}`
//! - `{"weekly": {"day": "sun", "at": "03:00"}}`
//! - `{"cron": "0 3 * * MON-FRI"}`: standard cron, parsed by `croner` — minute hour
//!   day-of-month month day-of-week (an optional seconds field first), `*`, lists, ranges,
//!   `/steps`, month and day names, `@hourly` `@daily` `@weekly` `@monthly` `@yearly`; when
//!   both day fields are restricted either may match, as in Vixie cron;
//!
//! plus `"tz": "Europe/Berlin"` (an IANA name; default `UTC`). Times are wall-clock times
//! there, through DST changes: a time that does not exist that day (the spring-forward gap)
//! runs at the first minute after the gap, one that happens twice (fall back) runs once.
//! The zone data is compiled in (`chrono-tz`): the guest reads no files.

wit_bindgen::generate!({ world: "schedule", path: "../../wit" });

use std::str::FromStr;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use croner::Cron;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    daily: Option<String>,
    weekly: Option<Weekly>,
    cron: Option<String>,
    tz: Option<String>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Weekly {
    day: String,
    at: String,
}

fn hh_mm(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("time `{s}` is not HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 {
        return Err(bad());
    }
    Ok((h, m))
}

fn weekday(s: &str) -> Result<&'static str, String> {
    let days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let l = s.to_ascii_lowercase();
    days.iter()
        .find(|d| l.starts_with(*d))
        .copied()
        .ok_or_else(|| format!("day `{s}` is not a weekday (mon … sun)"))
}

/// The schedule as one cron pattern, and the zone its times are in.
fn parse(config: &str) -> Result<(Cron, Tz), String> {
    let c: Config = serde_json::from_str(config).map_err(|e| format!("schedule config: {e}"))?;
    let pattern = match (c.daily, c.weekly, c.cron) {
        (Some(at), None, None) => {
            let (h, m) = hh_mm(&at)?;
            format!("{m} {h} * * *")
        }
        (None, Some(w), None) => {
            let (h, m) = hh_mm(&w.at)?;
            format!("{m} {h} * * {}", weekday(&w.day)?)
        }
        (None, None, Some(expr)) => expr,
        _ => return Err("give exactly one of `daily`, `weekly` and `cron`".into()),
    };
    let cron = Cron::from_str(&pattern).map_err(|e| format!("cron `{pattern}`: {e}"))?;
    let tz = match c.tz.as_deref() {
        None => Tz::UTC,
        Some(name) => name
            .parse()
            .map_err(|_| format!("time zone `{name}` is not an IANA name (e.g. Europe/Berlin)"))?,
    };
    Ok((cron, tz))
}

/// The first run strictly after `t` (Unix seconds).
fn next_after(cron: &Cron, tz: Tz, t: i64) -> Option<i64> {
    let start = DateTime::<Utc>::from_timestamp(t, 0)?.with_timezone(&tz);
    cron.find_next_occurrence(&start, false)
        .ok()
        .map(|next| next.timestamp())
}

struct Schedule;

impl Guest for Schedule {
    fn describe() -> Description {
        Description {
            name: "daily-weekly-cron".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: "schedule".into(),
            config_help: r#"{"daily": "02:30"} | {"weekly": {"day": "sun", "at": "03:00"}} | {"cron": "0 3 * * MON-FRI"}, each with an optional "tz": "Europe/Berlin" (default UTC)"#.into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        parse(&config).map(|_| ())
    }

    fn next_run(now: i64, config: String, last_run: Option<i64>) -> Option<i64> {
        let (cron, tz) = parse(&config).ok()?;
        next_after(&cron, tz, last_run.unwrap_or(now))
    }
}

export!(Schedule);
