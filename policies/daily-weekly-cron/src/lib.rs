//! `daily-weekly-cron`: when to back up next, in UTC. Config, one of:
//! - `{"daily": "02:30"}`
//! - `{"weekly": {"day": "sun", "at": "03:00"}}`
//! - `{"cron": "0 3 * * 1-5"}` (minute hour day-of-month month day-of-week; `*`, lists,
//!   ranges and `/steps`; day-of-week 0 or 7 is Sunday; when both day fields are
//!   restricted either may match, as in cron)

wit_bindgen::generate!({ world: "schedule", path: "../../wit" });

use chrono::{DateTime, Datelike, Timelike};

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
enum Config {
    Daily(String),
    Weekly { day: String, at: String },
    Cron(String),
}

/// Minute-resolution sets for each cron field.
struct Cron {
    minute: Vec<bool>,
    hour: Vec<bool>,
    dom: Vec<bool>,
    month: Vec<bool>,
    dow: Vec<bool>,
    dom_any: bool,
    dow_any: bool,
}

fn field(spec: &str, lo: u32, hi: u32, name: &str) -> Result<(Vec<bool>, bool), String> {
    let mut set = vec![false; hi as usize + 1];
    let bad = || format!("cron {name} `{spec}` is invalid ({lo}-{hi})");
    for part in spec.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (r, s.parse::<u32>().map_err(|_| bad())?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(bad());
        }
        let (a, b) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)
        } else {
            let v: u32 = range.parse().map_err(|_| bad())?;
            (v, if part.contains('/') { hi } else { v })
        };
        if a < lo || b > hi || a > b {
            return Err(bad());
        }
        for v in (a..=b).step_by(step as usize) {
            set[v as usize] = true;
        }
    }
    Ok((set, spec == "*"))
}

fn parse_cron(expr: &str) -> Result<Cron, String> {
    let f: Vec<&str> = expr.split_whitespace().collect();
    if f.len() != 5 {
        return Err(format!("cron `{expr}` needs 5 fields: minute hour day-of-month month day-of-week"));
    }
    let (minute, _) = field(f[0], 0, 59, "minute")?;
    let (hour, _) = field(f[1], 0, 23, "hour")?;
    let (dom, dom_any) = field(f[2], 1, 31, "day-of-month")?;
    let (month, _) = field(f[3], 1, 12, "month")?;
    let (mut dow, dow_any) = field(f[4], 0, 7, "day-of-week")?;
    if dow[7] {
        dow[0] = true;
    }
    Ok(Cron { minute, hour, dom, month, dow, dom_any, dow_any })
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

fn weekday(s: &str) -> Result<u32, String> {
    let days = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
    let l = s.to_ascii_lowercase();
    days.iter()
        .position(|d| l.starts_with(d))
        .map(|p| p as u32)
        .ok_or_else(|| format!("day `{s}` is not a weekday (mon … sun)"))
}

fn to_cron(config: &str) -> Result<Cron, String> {
    let c: Config = serde_json::from_str(config).map_err(|e| format!("schedule config: {e}"))?;
    match c {
        Config::Daily(at) => {
            let (h, m) = hh_mm(&at)?;
            parse_cron(&format!("{m} {h} * * *"))
        }
        Config::Weekly { day, at } => {
            let (h, m) = hh_mm(&at)?;
            parse_cron(&format!("{m} {h} * * {}", weekday(&day)?))
        }
        Config::Cron(expr) => parse_cron(&expr),
    }
}

impl Cron {
    fn day_matches(&self, d: &DateTime<chrono::Utc>) -> bool {
        let dom = self.dom[d.day() as usize];
        let dow = self.dow[d.weekday().num_days_from_sunday() as usize];
        let day = match (self.dom_any, self.dow_any) {
            (true, true) => true,
            (true, false) => dow,
            (false, true) => dom,
            (false, false) => dom || dow,
        };
        day && self.month[d.month() as usize]
    }

    /// The first matching minute strictly after `t`, within about four years.
    fn next_after(&self, t: i64) -> Option<i64> {
        let mut t = (t.div_euclid(60) + 1) * 60;
        let limit = t + 4 * 366 * 86_400;
        while t < limit {
            let d = DateTime::from_timestamp(t, 0)?;
            if !self.day_matches(&d) {
                t = (t.div_euclid(86_400) + 1) * 86_400; // next midnight
                continue;
            }
            if !self.hour[d.hour() as usize] {
                t = (t.div_euclid(3_600) + 1) * 3_600;
                continue;
            }
            if self.minute[d.minute() as usize] {
                return Some(t);
            }
            t += 60;
        }
        None
    }
}

struct Schedule;

impl Guest for Schedule {
    fn describe() -> Description {
        Description {
            name: "daily-weekly-cron".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            kind: "schedule".into(),
            config_help: r#"{"daily": "02:30"} | {"weekly": {"day": "sun", "at": "03:00"}} | {"cron": "0 3 * * 1-5"}, UTC"#.into(),
        }
    }

    fn validate_config(config: String) -> Result<(), String> {
        to_cron(&config).map(|_| ())
    }

    fn next_run(now: i64, config: String, last_run: Option<i64>) -> Option<i64> {
        to_cron(&config).ok()?.next_after(last_run.unwrap_or(now))
    }
}

export!(Schedule);
