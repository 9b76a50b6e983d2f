//! The `date` capability: calendar arithmetic and time-zone conversion with
//! real IANA time zones (through `jiff` and the tz database).
//!
//! Every parameter can be given by name or by position in `args`; a named,
//! non-null parameter wins over the positional one. The positional order is:
//!
//! | action     | `args` order                  | result                       |
//! |------------|-------------------------------|------------------------------|
//! | `today`    | `[timezone]`                  | `"2024-01-15"`               |
//! | `format`   | `[date, format, timezone]`    | the formatted string         |
//! | `diff`     | `[from, to, unit]`            | `to - from` in `unit`        |
//! | `add_days` | `[date, days]`                | the shifted date             |
//! | `timezone` | `[datetime, to, from]`        | `{datetime, timezone, offset}` |
//!
//! A date-like value is one of:
//! * a date, `2024-01-15`;
//! * a civil date and time (no zone), `2024-01-15T10:30:00`;
//! * an RFC 3339 timestamp, `2024-01-15T10:30:00Z` or `…+07:00`;
//! * an RFC 9557 zoned datetime, `2024-01-15T10:30:00-05:00[America/New_York]`.
//!
//! Time zones are IANA names (`Europe/Paris`, `Asia/Ho_Chi_Minh`) or `UTC`.
//! `null` and empty strings count as absent. Anything malformed fails with
//! `invalid_args` and a message naming the parameter.

use futures::future::BoxFuture;
use jetmesh_shared::capability::{Action, Call, Capability};
use jetmesh_shared::{Error, ErrorCode};

/// A date or a difference outside what the calendar covers.
pub const OVERFLOW: ErrorCode = ErrorCode::capability("overflow");
use jiff::civil;
use jiff::fmt::strtime::{BrokenDownTime, Config, PosixCustom};
use jiff::fmt::temporal::{Pieces, PiecesOffset};
use jiff::tz::{Offset, TimeZone};
use jiff::{SignedDuration, Span, Timestamp, Zoned};
use serde_json::{Map, Value, json};

/// The actions of [`Date`], in the order they are listed to users. Their
/// schemas give types only: a parameter may come by name or by position in
/// `args`, and the action itself says which one is missing.
const ACTIONS: &[Action] = &[
    Action {
        name: "today",
        description: "Today's date (YYYY-MM-DD) in a time zone (default UTC).",
        params: r#"{"type":"object","properties":{
  "timezone":{"type":["string","null"],"description":"An IANA time zone, like Europe/Paris, or UTC."},
  "args":{"type":["array","null"],"maxItems":1,"description":"[timezone]"}}}"#,
    },
    Action {
        name: "format",
        description: "Formats a date or timestamp with a strftime format (default %Y-%m-%d).",
        params: r#"{"type":"object","properties":{
  "date":{"type":["string","null"],"description":"A date (2024-01-15), a date and time, or an RFC 3339 timestamp."},
  "format":{"type":["string","null"],"description":"A strftime format, like %A %d %B %Y."},
  "timezone":{"type":["string","null"],"description":"The IANA time zone to show a timestamp in."},
  "args":{"type":["array","null"],"maxItems":3,"description":"[date, format, timezone]"}}}"#,
    },
    Action {
        name: "diff",
        description: "to minus from, in days (default), weeks, hours, minutes or seconds.",
        params: r#"{"type":"object","properties":{
  "from":{"type":["string","null"],"description":"The start: a date, a date and time, or a timestamp."},
  "to":{"type":["string","null"],"description":"The end, in the same forms."},
  "unit":{"type":["string","null"],"description":"days, weeks, hours, minutes or seconds."},
  "args":{"type":["array","null"],"maxItems":3,"description":"[from, to, unit]"}}}"#,
    },
    Action {
        name: "add_days",
        description: "Shifts a date or timestamp by a whole number of days (negative goes back).",
        params: r#"{"type":"object","properties":{
  "date":{"type":["string","null"],"description":"A date, a date and time, or a timestamp."},
  "days":{"type":["integer","null"],"minimum":-1000000,"maximum":1000000,"description":"Days to add."},
  "args":{"type":["array","null"],"maxItems":2,"description":"[date, days]"}}}"#,
    },
    Action {
        name: "timezone",
        description: "A date and time (default now) seen in another time zone.",
        params: r#"{"type":"object","properties":{
  "datetime":{"type":["string","null"],"description":"A date and time or a timestamp (default now)."},
  "to":{"type":["string","null"],"description":"The IANA time zone to convert to."},
  "from":{"type":["string","null"],"description":"The zone a civil datetime is read in (default UTC)."},
  "args":{"type":["array","null"],"maxItems":3,"description":"[datetime, to, from]"}}}"#,
    },
];

/// The largest shift, in days, `add_days` accepts either way.
const MAX_DAYS: i64 = 1_000_000;

/// The `strftime` format used when `format` is not given.
const DEFAULT_FORMAT: &str = "%Y-%m-%d";

/// The time zone used when none is given.
const DEFAULT_TZ: &str = "UTC";

/// Example shapes quoted in error messages.
const DATE_SHAPES: &str = "a date like \"2024-01-15\", a date and time like \
    \"2024-01-15T10:30:00\", or an RFC 3339 timestamp like \"2024-01-15T10:30:00Z\"";

/// The built-in `date` capability.
#[derive(Debug, Clone, Copy)]
pub struct Date {
    /// Where "now" comes from (`today`, and `timezone` without a datetime).
    clock: fn() -> Timestamp,
}

impl Default for Date {
    fn default() -> Self {
        Date {
            clock: Timestamp::now,
        }
    }
}

impl Date {
    /// A `Date` whose notion of "now" is `clock`, for deterministic tests.
    pub fn with_clock(clock: fn() -> Timestamp) -> Self {
        Date { clock }
    }

    fn now(&self) -> Timestamp {
        (self.clock)()
    }
}

impl Capability for Date {
    fn name(&self) -> &'static str {
        "date"
    }

    fn actions(&self) -> &'static [Action] {
        ACTIONS
    }

    fn execute<'a>(&'a self, call: Call<'a>) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move { self.run(call.action, call.params) })
    }
}

impl Date {
    fn run(&self, action: &str, params: &Map<String, Value>) -> Result<Value, Error> {
        let positional: &'static [&'static str] = match action {
            "today" => &["timezone"],
            "format" => &["date", "format", "timezone"],
            "diff" => &["from", "to", "unit"],
            "add_days" => &["date", "days"],
            "timezone" => &["datetime", "to", "from"],
            other => {
                return Err(Error::new(
                    ErrorCode::UnknownAction,
                    format!(
                        "date has no action {}; the actions are: {}",
                        Value::from(other),
                        ACTIONS
                            .iter()
                            .map(|a| a.name)
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        };
        let p = Params::new(action, params, positional)?;
        match action {
            "today" => self.today(&p),
            "format" => format(&p),
            "diff" => diff(&p),
            "add_days" => add_days(&p),
            _ => self.timezone(&p),
        }
    }

    /// `today [timezone]`: the current date in `timezone`.
    fn today(&self, p: &Params) -> Result<Value, Error> {
        let tz = p.time_zone("timezone")?.unwrap_or(TimeZone::UTC);
        Ok(Value::from(self.now().to_zoned(tz).date().to_string()))
    }

    /// `timezone [datetime, to, from]`: `datetime` (now when absent) seen in
    /// zone `to`. A civil `datetime` is read in zone `from` (default UTC);
    /// a timestamp carries its own offset, so `from` does not change it.
    fn timezone(&self, p: &Params) -> Result<Value, Error> {
        let mut datetime = p.str("datetime")?;
        let mut to = p.str("to")?;
        // `{"datetime": "Asia/Tokyo"}` or `args: ["Asia/Tokyo"]`: the caller
        // meant the current time in that zone.
        if let (None, Some(s)) = (to, datetime)
            && parse_when("datetime", s).is_err()
            && lookup_tz("to", s).is_ok()
        {
            to = Some(s);
            datetime = None;
        }
        let Some(to) = to else {
            return Err(Error::invalid_args(
                "to is required: the IANA time zone to convert into, such as \"Asia/Ho_Chi_Minh\"",
            ));
        };
        let to_tz = lookup_tz("to", to)?;
        let from_tz = p.time_zone("from")?.unwrap_or(TimeZone::UTC);
        let instant = match datetime {
            None => Timestamp::from_second(self.now().as_second())
                .map_err(|e| Error::internal(format!("the clock is out of range: {e}")))?,
            Some(s) => match parse_when("datetime", s)? {
                When::Instant(zoned, _) => zoned.timestamp(),
                civil => civil.in_zone("datetime", s, &from_tz)?.timestamp(),
            },
        };
        let zoned = instant.to_zoned(to_tz);
        let offset = zoned.offset();
        let name = zoned.time_zone().iana_name().unwrap_or(to).to_string();
        Ok(json!({
            "datetime": instant.display_with_offset(offset).to_string(),
            "timezone": name,
            "offset": offset_string(offset),
        }))
    }
}

/// `format [date, format, timezone]`.
fn format(p: &Params) -> Result<Value, Error> {
    let text = p.required_str("date", "the date to format")?;
    let when = parse_when("date", text)?;
    let fmt = p.str("format")?.unwrap_or(DEFAULT_FORMAT);
    let tz = p.time_zone("timezone")?;
    let civil_only = tz.is_none() && !matches!(when, When::Instant(..));
    let tm = match (when, tz) {
        (When::Instant(zoned, _), Some(tz)) => BrokenDownTime::from(&zoned.with_time_zone(tz)),
        (When::Instant(zoned, _), None) => BrokenDownTime::from(&zoned),
        // A civil value with a time zone is the wall-clock time in that zone.
        (civil, Some(tz)) => BrokenDownTime::from(&civil.in_zone("date", text, &tz)?),
        (When::Date(d), None) => BrokenDownTime::from(d),
        (When::DateTime(dt), None) => BrokenDownTime::from(dt),
    };
    // POSIX locale for %c, %x, %X ("Mon Jan 15 10:30:00 2024").
    let config = Config::new().custom(PosixCustom::new());
    let out = tm.to_string_with_config(&config, fmt).map_err(|e| {
        let hint = if civil_only {
            "; a date without an offset has no time zone to print, so give timezone too"
        } else {
            ""
        };
        Error::invalid_args(format!(
            "cannot format {} with format {}: {e}{hint}",
            Value::from(text),
            Value::from(fmt)
        ))
    })?;
    Ok(Value::from(out))
}

/// `diff [from, to, unit]`: `to - from`, an integer when it is a whole
/// number of `unit`s. Two civil values are compared as wall-clock times; a
/// civil value compared with a timestamp is read in the timestamp's zone.
/// `days` and `weeks` between zoned values count calendar days in `from`'s
/// zone (a DST day is one day); smaller units count elapsed time.
fn diff(p: &Params) -> Result<Value, Error> {
    let from_text = p.required_str("from", "the start date")?;
    let to_text = p.required_str("to", "the end date")?;
    let from = parse_when("from", from_text)?;
    let to = parse_when("to", to_text)?;
    let unit = match p.str("unit")? {
        None => Unit::Days,
        Some(u) => Unit::parse(u)?,
    };
    let elapsed: SignedDuration = match (from, to) {
        (When::Instant(from, _), to) => {
            let to = to.in_zone("to", to_text, from.time_zone())?;
            zoned_diff(&from, &to, unit)
        }
        (from, When::Instant(to, _)) => {
            let from = from.in_zone("from", from_text, to.time_zone())?;
            zoned_diff(&from, &to, unit)
        }
        (from, to) => to.civil().duration_since(from.civil()),
    };
    let nanos = elapsed.as_nanos();
    let per_unit = unit.nanos();
    if nanos % per_unit == 0 {
        let whole = i64::try_from(nanos / per_unit)
            .map_err(|_| Error::new(OVERFLOW, "the difference is too large"))?;
        Ok(Value::from(whole))
    } else {
        Ok(Value::from(nanos as f64 / per_unit as f64))
    }
}

fn zoned_diff(from: &Zoned, to: &Zoned, unit: Unit) -> SignedDuration {
    match unit {
        Unit::Days | Unit::Weeks => to
            .with_time_zone(from.time_zone().clone())
            .datetime()
            .duration_since(from.datetime()),
        _ => to.timestamp().duration_since(from.timestamp()),
    }
}

/// `add_days [date, days]`: the date shifted by whole calendar days, in the
/// same shape it came in.
fn add_days(p: &Params) -> Result<Value, Error> {
    let text = p.required_str("date", "the date to shift")?;
    let when = parse_when("date", text)?;
    let days = p.days()?;
    let span = Span::new().try_days(days).map_err(|e| {
        Error::invalid_args(format!(
            "days must be between -{MAX_DAYS} and {MAX_DAYS}: {e}"
        ))
    })?;
    let out_of_range = |e: jiff::Error| {
        Error::invalid_args(format!(
            "adding {days} {} to {} leaves the supported range of years -9999 to 9999: {e}",
            if days.abs() == 1 { "day" } else { "days" },
            Value::from(text)
        ))
    };
    let shifted = match when {
        When::Date(d) => When::Date(d.checked_add(span).map_err(out_of_range)?),
        When::DateTime(dt) => When::DateTime(dt.checked_add(span).map_err(out_of_range)?),
        When::Instant(z, style) => When::Instant(z.checked_add(span).map_err(out_of_range)?, style),
    };
    Ok(Value::from(shifted.to_string()))
}

/// A parsed date-like value.
#[derive(Debug, Clone)]
enum When {
    /// `2024-01-15`.
    Date(civil::Date),
    /// `2024-01-15T10:30:00`: a wall-clock time with no zone.
    DateTime(civil::DateTime),
    /// An exact instant with its zone, and how it was written.
    Instant(Zoned, Style),
}

/// How an instant was written, so results keep the caller's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    /// `2024-01-15T10:30:00Z`.
    Zulu,
    /// `2024-01-15T10:30:00+07:00`.
    Offset,
    /// `2024-01-15T10:30:00-05:00[America/New_York]`.
    Annotated,
}

impl When {
    /// The civil datetime (a date is its midnight).
    fn civil(&self) -> civil::DateTime {
        match self {
            When::Date(d) => d.to_datetime(civil::Time::midnight()),
            When::DateTime(dt) => *dt,
            When::Instant(z, _) => z.datetime(),
        }
    }

    /// This value as an instant: an instant is moved into `tz`, a civil
    /// value is read as the wall-clock time in `tz` (a date as the start of
    /// its day; a time skipped by a DST gap moves forward).
    fn in_zone(&self, name: &str, text: &str, tz: &TimeZone) -> Result<Zoned, Error> {
        match self {
            When::Instant(z, _) => Ok(z.with_time_zone(tz.clone())),
            When::Date(d) => d.to_zoned(tz.clone()),
            When::DateTime(dt) => dt.to_zoned(tz.clone()),
        }
        .map_err(|e| {
            Error::invalid_args(format!(
                "{name} {} does not exist in that time zone: {e}",
                Value::from(text)
            ))
        })
    }
}

impl std::fmt::Display for When {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            When::Date(d) => write!(f, "{d}"),
            When::DateTime(dt) => write!(f, "{dt}"),
            When::Instant(z, Style::Zulu) => write!(f, "{}", z.timestamp()),
            When::Instant(z, Style::Offset) => {
                write!(f, "{}", z.timestamp().display_with_offset(z.offset()))
            }
            When::Instant(z, Style::Annotated) => write!(f, "{z}"),
        }
    }
}

/// Parses the date-like parameter `name`.
fn parse_when(name: &str, text: &str) -> Result<When, Error> {
    let bad = |e: &dyn std::fmt::Display| {
        Error::invalid_args(format!(
            "{name} {} is not a valid date or time; use {DATE_SHAPES} ({e})",
            Value::from(text)
        ))
    };
    let pieces = Pieces::parse(text).map_err(|e| bad(&e))?;
    if pieces.time_zone_annotation().is_some() {
        let zoned: Zoned = text.parse().map_err(|e| bad(&e))?;
        return Ok(When::Instant(zoned, Style::Annotated));
    }
    let (tz, style) = match pieces.offset() {
        None => {
            return Ok(match pieces.time() {
                None => When::Date(pieces.date()),
                Some(time) => When::DateTime(pieces.date().to_datetime(time)),
            });
        }
        Some(PiecesOffset::Zulu) => (TimeZone::UTC, Style::Zulu),
        Some(PiecesOffset::Numeric(n)) => (TimeZone::fixed(n.offset()), Style::Offset),
        Some(_) => (TimeZone::UTC, Style::Zulu),
    };
    let instant: Timestamp = text.parse().map_err(|e| bad(&e))?;
    Ok(When::Instant(instant.to_zoned(tz), style))
}

/// Looks up the time zone given as parameter `name`.
fn lookup_tz(name: &str, zone: &str) -> Result<TimeZone, Error> {
    if zone.eq_ignore_ascii_case(DEFAULT_TZ) || zone == "Z" {
        return Ok(TimeZone::UTC);
    }
    TimeZone::get(zone).map_err(|_| {
        Error::invalid_args(format!(
            "{name} {} is not a known time zone; use an IANA name such as \"UTC\", \
             \"Europe/Paris\" or \"Asia/Ho_Chi_Minh\"",
            Value::from(zone)
        ))
    })
}

/// `+07:00`, `-05:00`, `+00:00` (and `+05:45:30` for odd historic offsets).
fn offset_string(offset: Offset) -> String {
    let total = offset.seconds();
    let sign = if total < 0 { '-' } else { '+' };
    let abs = total.unsigned_abs();
    let (h, m, s) = (abs / 3600, abs % 3600 / 60, abs % 60);
    if s == 0 {
        format!("{sign}{h:02}:{m:02}")
    } else {
        format!("{sign}{h:02}:{m:02}:{s:02}")
    }
}

/// The units `diff` reports in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Days,
    Weeks,
    Hours,
    Minutes,
    Seconds,
}

impl Unit {
    fn parse(s: &str) -> Result<Unit, Error> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "days" | "day" => Unit::Days,
            "weeks" | "week" => Unit::Weeks,
            "hours" | "hour" => Unit::Hours,
            "minutes" | "minute" => Unit::Minutes,
            "seconds" | "second" => Unit::Seconds,
            _ => {
                return Err(Error::invalid_args(format!(
                    "unit {} is not supported; use one of days, weeks, hours, minutes, seconds",
                    Value::from(s)
                )));
            }
        })
    }

    fn nanos(self) -> i128 {
        const SECOND: i128 = 1_000_000_000;
        match self {
            Unit::Seconds => SECOND,
            Unit::Minutes => 60 * SECOND,
            Unit::Hours => 3600 * SECOND,
            Unit::Days => 86_400 * SECOND,
            Unit::Weeks => 7 * 86_400 * SECOND,
        }
    }
}

/// An action's parameters: named fields, else positions in `args`.
struct Params<'a> {
    action: &'a str,
    named: &'a Map<String, Value>,
    args: &'a [Value],
    positional: &'static [&'static str],
}

impl<'a> Params<'a> {
    fn new(
        action: &'a str,
        named: &'a Map<String, Value>,
        positional: &'static [&'static str],
    ) -> Result<Self, Error> {
        let order = format!("[{}]", positional.join(", "));
        let args: &[Value] = match named.get("args") {
            None | Some(Value::Null) => &[],
            Some(Value::Array(items)) => items,
            Some(other) => {
                return Err(Error::invalid_args(format!(
                    "args must be an array of the positional parameters {order} of {action}, not {}",
                    describe(other)
                )));
            }
        };
        if args.len() > positional.len() {
            return Err(Error::invalid_args(format!(
                "args has {} values but {action} takes at most {}: {order}",
                args.len(),
                positional.len()
            )));
        }
        Ok(Params {
            action,
            named,
            args,
            positional,
        })
    }

    /// The value of `name`: the named field, else its position in `args`.
    /// `null` counts as absent.
    fn get(&self, name: &str) -> Option<&'a Value> {
        let named = self.named.get(name).filter(|v| !v.is_null());
        named.or_else(|| {
            let i = self.positional.iter().position(|p| *p == name)?;
            self.args.get(i).filter(|v| !v.is_null())
        })
    }

    /// A string parameter, trimmed; empty counts as absent.
    fn str(&self, name: &str) -> Result<Option<&'a str>, Error> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.trim()).filter(|s| !s.is_empty())),
            Some(other) => Err(Error::invalid_args(format!(
                "{name} must be a string, not {}",
                describe(other)
            ))),
        }
    }

    fn required_str(&self, name: &str, what: &str) -> Result<&'a str, Error> {
        self.str(name)?.ok_or_else(|| {
            Error::invalid_args(format!(
                "{name} is required: {what}, as a named field or args[{}]",
                self.positional.iter().position(|p| *p == name).unwrap_or(0)
            ))
        })
    }

    fn time_zone(&self, name: &str) -> Result<Option<TimeZone>, Error> {
        self.str(name)?.map(|z| lookup_tz(name, z)).transpose()
    }

    /// `days`: a whole number within ±[`MAX_DAYS`].
    fn days(&self) -> Result<i64, Error> {
        let bad = |v: &Value| {
            Error::invalid_args(format!(
                "days must be a whole number between -{MAX_DAYS} and {MAX_DAYS}, not {}",
                describe(v)
            ))
        };
        match self.get("days") {
            None => Err(Error::invalid_args(format!(
                "days is required for {}: the whole number of days to add (negative to go back)",
                self.action
            ))),
            Some(v) => match v.as_i64() {
                Some(d) if (-MAX_DAYS..=MAX_DAYS).contains(&d) => Ok(d),
                _ => Err(bad(v)),
            },
        }
    }
}

/// A JSON value with its type, for error messages: `the string "x"`, `null`.
fn describe(v: &Value) -> String {
    let kind = match v {
        Value::Null => return "null".to_string(),
        Value::Bool(_) => "the boolean",
        Value::Number(_) => "the number",
        Value::String(_) => "the string",
        Value::Array(_) => "the array",
        Value::Object(_) => "the object",
    };
    let s = v.to_string();
    if s.chars().count() > 40 {
        let head: String = s.chars().take(37).collect();
        format!("{kind} {head}...")
    } else {
        format!("{kind} {s}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2024-01-15T20:30:45.5Z: a Monday evening in UTC, already Tuesday in Asia.
    fn fixed_now() -> Timestamp {
        "2024-01-15T20:30:45.5Z".parse().unwrap()
    }

    fn cap() -> Date {
        Date::with_clock(fixed_now)
    }

    fn params(p: Value) -> Map<String, Value> {
        match p {
            Value::Object(m) => m,
            other => panic!("params must be an object, got {other}"),
        }
    }

    fn exec(action: &str, p: Value) -> Result<Value, Error> {
        let Value::Object(p) = p else {
            panic!("params must be an object, got {p}")
        };
        futures::executor::block_on(cap().execute(Call::bare(action, &p)))
    }

    fn ok(action: &str, p: Value) -> Value {
        exec(action, p.clone()).unwrap_or_else(|e| panic!("{action} {p} failed: {e}"))
    }

    fn err(action: &str, p: Value) -> Error {
        match exec(action, p.clone()) {
            Ok(v) => panic!("{action} {p} should fail, got {v}"),
            Err(e) => e,
        }
    }

    fn invalid(action: &str, p: Value) -> String {
        let e = err(action, p.clone());
        assert_eq!(e.code, ErrorCode::InvalidArgs, "{action} {p}: {e}");
        e.message
    }

    #[test]
    fn name_and_actions() {
        let d = Date::default();
        assert_eq!(d.name(), "date");
        let names: Vec<&str> = d.actions().iter().map(|a| a.name).collect();
        assert_eq!(names, &["today", "format", "diff", "add_days", "timezone"]);
    }

    #[test]
    fn schemas_take_what_the_actions_take() {
        let r = jetmesh_shared::capability::registered(&Date::default()).unwrap();
        let ok = |a: &str, p: Value| r.check_params("t", a, &params(p)).unwrap();
        ok("add_days", json!({"date": "2024-01-15", "days": 10}));
        ok("add_days", json!({"args": ["2024-01-15", 10]}));
        ok(
            "diff",
            json!({"from": "2024-01-01", "to": "2024-03-01", "unit": null}),
        );
        ok("today", json!({}));
        let e = r
            .check_params(
                "t",
                "add_days",
                &params(json!({"date": "2024-01-15", "days": "ten"})),
            )
            .unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgs);
        assert!(e.message.contains("days:"), "{}", e.message);
    }

    #[test]
    fn tz_database_is_available() {
        // The real tz database, not just UTC: the other tests depend on it.
        let tz = TimeZone::get("America/New_York").expect("IANA tz database");
        assert_eq!(tz.iana_name(), Some("America/New_York"));
    }

    #[test]
    fn today_with_the_real_clock() {
        let p = Map::new();
        let v =
            futures::executor::block_on(Date::default().execute(Call::bare("today", &p))).unwrap();
        let s = v.as_str().unwrap();
        assert_eq!(s.len(), 10);
        assert!(s.parse::<civil::Date>().is_ok(), "{s}");
    }

    #[test]
    fn today_in_a_time_zone() {
        assert_eq!(ok("today", json!({})), json!("2024-01-15"));
        assert_eq!(ok("today", json!({"timezone": "UTC"})), json!("2024-01-15"));
        assert_eq!(
            ok("today", json!({"timezone": "Asia/Tokyo"})),
            json!("2024-01-16")
        );
        assert_eq!(
            ok("today", json!({"args": ["Asia/Ho_Chi_Minh"]})),
            json!("2024-01-16")
        );
        assert_eq!(
            ok("today", json!({"timezone": "America/Los_Angeles"})),
            json!("2024-01-15")
        );
        // Named wins over positional.
        assert_eq!(
            ok("today", json!({"timezone": "Asia/Tokyo", "args": ["UTC"]})),
            json!("2024-01-16")
        );
        // null and "" mean the default.
        assert_eq!(ok("today", json!({"timezone": null})), json!("2024-01-15"));
        assert_eq!(ok("today", json!({"args": [""]})), json!("2024-01-15"));
    }

    #[test]
    fn format_examples() {
        let f = |date: &str, fmt: &str| ok("format", json!({"date": date, "format": fmt}));
        assert_eq!(f("2024-01-15", "%d/%m/%Y"), json!("15/01/2024"));
        assert_eq!(
            f("2024-01-15", "%A, %B %-d, %Y"),
            json!("Monday, January 15, 2024")
        );
        assert_eq!(
            f("2024-01-15T10:30:00", "%H:%M on %a"),
            json!("10:30 on Mon")
        );
        assert_eq!(
            f("2024-01-15T10:30:00Z", "%Y-%m-%d %H:%M %z"),
            json!("2024-01-15 10:30 +0000")
        );
        assert_eq!(
            f("2024-01-15T10:30:00+07:00", "%H:%M %:z"),
            json!("10:30 +07:00")
        );
        assert_eq!(
            f("2024-07-04T12:00:00-04:00[America/New_York]", "%H:%M %Z"),
            json!("12:00 EDT")
        );
        assert_eq!(f("2024-01-15", "day %j of %Y"), json!("day 015 of 2024"));
        assert_eq!(
            f("2024-01-15T10:30:00", "%c"),
            json!("Mon Jan 15 10:30:00 2024")
        );
        assert_eq!(f("2024-01-15", "%x"), json!("01/15/24"));
    }

    #[test]
    fn format_defaults_and_positional() {
        assert_eq!(
            ok("format", json!({"date": "2024-01-15T23:59:00"})),
            json!("2024-01-15")
        );
        assert_eq!(
            ok("format", json!({"args": ["2024-01-15", "%d/%m/%Y"]})),
            json!("15/01/2024")
        );
        assert_eq!(
            ok(
                "format",
                json!({"args": ["2024-01-15T10:30:00Z", "%H:%M", "Asia/Tokyo"]})
            ),
            json!("19:30")
        );
        // Named wins over positional, field by field.
        assert_eq!(
            ok(
                "format",
                json!({"args": ["2024-01-15", "%d/%m/%Y"], "format": "%Y"})
            ),
            json!("2024")
        );
        assert_eq!(
            ok(
                "format",
                json!({"args": ["1999-12-31"], "date": "2024-01-15"})
            ),
            json!("2024-01-15")
        );
    }

    #[test]
    fn format_converts_timestamps_into_the_time_zone() {
        let f = |date: &str, tz: &str| {
            ok(
                "format",
                json!({"date": date, "format": "%Y-%m-%d %H:%M %:z %Z", "timezone": tz}),
            )
        };
        assert_eq!(
            f("2024-01-15T10:30:00Z", "America/New_York"),
            json!("2024-01-15 05:30 -05:00 EST")
        );
        assert_eq!(
            f("2024-07-15T10:30:00Z", "America/New_York"),
            json!("2024-07-15 06:30 -04:00 EDT")
        );
        assert_eq!(
            f("2024-01-15T23:30:00+00:00", "Asia/Ho_Chi_Minh"),
            json!("2024-01-16 06:30 +07:00 +07")
        );
        // A civil value is read as the wall-clock time in that zone.
        assert_eq!(
            f("2024-07-15T10:30:00", "Europe/Paris"),
            json!("2024-07-15 10:30 +02:00 CEST")
        );
        assert_eq!(
            f("2024-01-15", "Europe/Paris"),
            json!("2024-01-15 00:00 +01:00 CET")
        );
    }

    #[test]
    fn format_errors() {
        let m = invalid("format", json!({"date": "2024-01-15", "format": "%z"}));
        assert!(
            m.starts_with("cannot format \"2024-01-15\" with format \"%z\""),
            "{m}"
        );
        assert!(m.ends_with("so give timezone too"), "{m}");
        assert_eq!(
            ok(
                "format",
                json!({"date": "2024-01-15", "format": "%z", "timezone": "Asia/Tokyo"})
            ),
            json!("+0900")
        );
        let m = invalid("format", json!({"date": "2024-01-15", "format": "%Q"}));
        assert!(m.starts_with("cannot format"), "{m}");
        let m = invalid("format", json!({"date": "2024-01-15", "format": 5}));
        assert_eq!(m, "format must be a string, not the number 5");
        let m = invalid("format", json!({"format": "%Y"}));
        assert!(m.starts_with("date is required"), "{m}");
        let m = invalid(
            "format",
            json!({"date": "2024-01-15", "timezone": "Mars/Olympus"}),
        );
        assert!(
            m.starts_with("timezone \"Mars/Olympus\" is not a known time zone"),
            "{m}"
        );
        let m = invalid("format", json!({"date": "15/01/2024"}));
        assert!(
            m.starts_with("date \"15/01/2024\" is not a valid date or time"),
            "{m}"
        );
    }

    #[test]
    fn diff_in_days() {
        let d = |from: &str, to: &str| ok("diff", json!({"from": from, "to": to}));
        assert_eq!(d("2024-01-01", "2024-03-01"), json!(60));
        assert!(d("2024-01-01", "2024-03-01").is_i64());
        assert_eq!(d("2024-03-01", "2024-01-01"), json!(-60));
        assert_eq!(d("2023-01-01", "2023-03-01"), json!(59));
        assert_eq!(d("2024-01-15", "2024-01-15"), json!(0));
        assert_eq!(d("2024-01-01", "2025-01-01"), json!(366));
        assert_eq!(d("2024-01-01T00:00:00", "2024-01-02T12:00:00"), json!(1.5));
        assert_eq!(d("2024-01-01", "2024-01-02T06:00:00"), json!(1.25));
        assert_eq!(
            d("2024-01-01T00:00:00Z", "2024-01-02T00:00:00+07:00"),
            json!(0.7083333333333334)
        );
        assert_eq!(
            ok("diff", json!({"args": ["2024-01-01", "2024-03-01"]})),
            json!(60)
        );
    }

    #[test]
    fn diff_in_other_units() {
        let d = |from: &str, to: &str, unit: &str| {
            ok("diff", json!({"from": from, "to": to, "unit": unit}))
        };
        assert_eq!(d("2024-01-01", "2024-01-15", "weeks"), json!(2));
        assert_eq!(d("2024-01-01", "2024-03-01", "weeks"), json!(60.0 / 7.0));
        assert_eq!(d("2024-01-01", "2024-01-02", "hours"), json!(24));
        assert_eq!(d("2024-01-01", "2024-01-02", "minutes"), json!(1440));
        assert_eq!(d("2024-01-01", "2024-01-02", "seconds"), json!(86400));
        assert_eq!(
            d("2024-01-01T10:00:00", "2024-01-01T10:30:00", "hours"),
            json!(0.5)
        );
        assert_eq!(
            d("2024-01-01T10:00:00", "2024-01-01T10:00:01.5", "seconds"),
            json!(1.5)
        );
        assert_eq!(
            d("2024-01-01T10:00:00Z", "2024-01-01T17:00:00+07:00", "hours"),
            json!(0)
        );
        // Singular and capitalised unit names are accepted.
        assert_eq!(d("2024-01-01", "2024-01-02", "Hour"), json!(24));
        // Positional unit; named wins.
        assert_eq!(
            ok(
                "diff",
                json!({"args": ["2024-01-01", "2024-01-02", "hours"]})
            ),
            json!(24)
        );
        assert_eq!(
            ok(
                "diff",
                json!({"args": ["2024-01-01", "2024-01-02", "hours"], "unit": "minutes"})
            ),
            json!(1440)
        );
    }

    #[test]
    fn diff_across_dst() {
        // New York sprang forward on 2024-03-10: that day has 23 hours.
        let from = "2024-03-09T12:00:00-05:00[America/New_York]";
        let to = "2024-03-10T12:00:00-04:00[America/New_York]";
        assert_eq!(ok("diff", json!({"from": from, "to": to})), json!(1));
        assert_eq!(
            ok("diff", json!({"from": from, "to": to, "unit": "hours"})),
            json!(23)
        );
        // A civil date compared with a zoned value is read in that zone.
        assert_eq!(
            ok(
                "diff",
                json!({"from": "2024-01-01", "to": "2024-01-02T00:00:00+07:00"})
            ),
            json!(1)
        );
        assert_eq!(
            ok(
                "diff",
                json!({"from": "2024-01-02T00:00:00+07:00", "to": "2024-01-03"})
            ),
            json!(1)
        );
    }

    #[test]
    fn diff_errors() {
        let m = invalid(
            "diff",
            json!({"from": "2024-01-01", "to": "2024-01-02", "unit": "months"}),
        );
        assert_eq!(
            m,
            "unit \"months\" is not supported; use one of days, weeks, hours, minutes, seconds"
        );
        let m = invalid("diff", json!({"from": "2024-01-01"}));
        assert!(m.starts_with("to is required"), "{m}");
        let m = invalid("diff", json!({"to": "2024-01-01"}));
        assert!(m.starts_with("from is required"), "{m}");
        let m = invalid("diff", json!({"from": "2024-02-30", "to": "2024-03-01"}));
        assert!(
            m.starts_with("from \"2024-02-30\" is not a valid date or time"),
            "{m}"
        );
        let m = invalid("diff", json!({"from": "2024-01-01", "to": "tomorrow"}));
        assert!(
            m.starts_with("to \"tomorrow\" is not a valid date or time"),
            "{m}"
        );
        let m = invalid("diff", json!({"from": 20240101, "to": "2024-01-02"}));
        assert_eq!(m, "from must be a string, not the number 20240101");
        let m = invalid(
            "diff",
            json!({"from": "2024-01-01", "to": "2024-01-02", "unit": 1}),
        );
        assert_eq!(m, "unit must be a string, not the number 1");
    }

    #[test]
    fn add_days_to_dates() {
        let a = |date: &str, days: i64| ok("add_days", json!({"date": date, "days": days}));
        assert_eq!(a("2024-01-15", 10), json!("2024-01-25"));
        assert_eq!(a("2024-02-28", 1), json!("2024-02-29"));
        assert_eq!(a("2023-02-28", 1), json!("2023-03-01"));
        assert_eq!(a("2024-01-01", -1), json!("2023-12-31"));
        assert_eq!(a("2024-01-15", 0), json!("2024-01-15"));
        assert_eq!(a("2024-01-15", 366), json!("2025-01-15"));
        assert_eq!(a("2000-01-01", 1_000_000), json!("4737-11-28"));
        assert_eq!(
            ok("add_days", json!({"args": ["2024-01-15", 10]})),
            json!("2024-01-25")
        );
        assert_eq!(
            ok("add_days", json!({"args": ["2024-01-15", 10], "days": -15})),
            json!("2023-12-31")
        );
    }

    #[test]
    fn add_days_keeps_the_shape() {
        let a = |date: &str, days: i64| ok("add_days", json!({"date": date, "days": days}));
        assert_eq!(a("2024-01-15T10:30:00", 1), json!("2024-01-16T10:30:00"));
        assert_eq!(a("2024-01-15T10:30:00Z", 1), json!("2024-01-16T10:30:00Z"));
        assert_eq!(
            a("2024-01-31T23:00:00+07:00", 1),
            json!("2024-02-01T23:00:00+07:00")
        );
        assert_eq!(
            a("2024-01-15T10:30:00-05:00", -15),
            json!("2023-12-31T10:30:00-05:00")
        );
        // Calendar days across DST keep the wall-clock time and move the offset.
        assert_eq!(
            a("2024-03-09T12:00:00-05:00[America/New_York]", 1),
            json!("2024-03-10T12:00:00-04:00[America/New_York]")
        );
    }

    #[test]
    fn add_days_errors() {
        for days in [
            json!(1.5),
            json!("10"),
            json!(true),
            json!(1_000_001),
            json!(-1_000_001),
            json!([1]),
        ] {
            let m = invalid("add_days", json!({"date": "2024-01-15", "days": days}));
            assert!(
                m.starts_with("days must be a whole number between -1000000 and 1000000, not "),
                "{m}"
            );
        }
        let m = invalid("add_days", json!({"date": "2024-01-15"}));
        assert!(m.starts_with("days is required"), "{m}");
        let m = invalid("add_days", json!({"days": 1}));
        assert!(m.starts_with("date is required"), "{m}");
        let m = invalid("add_days", json!({"date": "2024-13-01", "days": 1}));
        assert!(
            m.starts_with("date \"2024-13-01\" is not a valid date or time"),
            "{m}"
        );
        let m = invalid("add_days", json!({"date": "9999-12-31", "days": 1}));
        assert!(
            m.starts_with("adding 1 day to \"9999-12-31\" leaves the supported range"),
            "{m}"
        );
        let m = invalid("add_days", json!({"args": ["2024-01-15", 1, 2]}));
        assert_eq!(
            m,
            "args has 3 values but add_days takes at most 2: [date, days]"
        );
    }

    #[test]
    fn timezone_converts_timestamps() {
        let v = ok(
            "timezone",
            json!({"datetime": "2024-01-15T10:30:00Z", "to": "Asia/Ho_Chi_Minh"}),
        );
        assert_eq!(
            v,
            json!({"datetime": "2024-01-15T17:30:00+07:00", "timezone": "Asia/Ho_Chi_Minh", "offset": "+07:00"})
        );
        // The input offset is honoured; `from` does not override it.
        let v = ok(
            "timezone",
            json!({"datetime": "2024-01-15T17:30:00+07:00", "to": "UTC", "from": "Asia/Tokyo"}),
        );
        assert_eq!(
            v,
            json!({"datetime": "2024-01-15T10:30:00+00:00", "timezone": "UTC", "offset": "+00:00"})
        );
        let v = ok(
            "timezone",
            json!({"datetime": "2024-01-15T10:30:00Z", "to": "Asia/Kathmandu"}),
        );
        assert_eq!(v["datetime"], json!("2024-01-15T16:15:00+05:45"));
        assert_eq!(v["offset"], json!("+05:45"));
    }

    #[test]
    fn timezone_is_dst_aware() {
        let ny = |dt: &str| {
            ok(
                "timezone",
                json!({"datetime": dt, "to": "America/New_York"}),
            )
        };
        assert_eq!(
            ny("2024-01-15T17:00:00Z"),
            json!({"datetime": "2024-01-15T12:00:00-05:00", "timezone": "America/New_York", "offset": "-05:00"})
        );
        assert_eq!(
            ny("2024-07-15T17:00:00Z"),
            json!({"datetime": "2024-07-15T13:00:00-04:00", "timezone": "America/New_York", "offset": "-04:00"})
        );
        // Civil times read in a DST zone.
        let v = ok(
            "timezone",
            json!({"datetime": "2024-07-15T09:00:00", "from": "America/New_York", "to": "Europe/London"}),
        );
        assert_eq!(v["datetime"], json!("2024-07-15T14:00:00+01:00"));
        let v = ok(
            "timezone",
            json!({"datetime": "2024-01-15T09:00:00", "from": "America/New_York", "to": "Europe/London"}),
        );
        assert_eq!(v["datetime"], json!("2024-01-15T14:00:00+00:00"));
    }

    #[test]
    fn timezone_civil_defaults_to_utc_and_positional() {
        let v = ok(
            "timezone",
            json!({"datetime": "2024-01-15T10:30:00", "to": "Asia/Ho_Chi_Minh"}),
        );
        assert_eq!(v["datetime"], json!("2024-01-15T17:30:00+07:00"));
        let v = ok(
            "timezone",
            json!({"args": ["2024-01-15T10:30:00", "Asia/Ho_Chi_Minh"]}),
        );
        assert_eq!(v["datetime"], json!("2024-01-15T17:30:00+07:00"));
        let v = ok(
            "timezone",
            json!({"args": ["2024-01-15T10:30:00", "Asia/Ho_Chi_Minh", "Asia/Tokyo"]}),
        );
        assert_eq!(v["datetime"], json!("2024-01-15T08:30:00+07:00"));
        // Named wins.
        let v = ok(
            "timezone",
            json!({"args": ["2024-01-15T10:30:00", "Asia/Ho_Chi_Minh"], "to": "Asia/Tokyo"}),
        );
        assert_eq!(v["timezone"], json!("Asia/Tokyo"));
        assert_eq!(v["datetime"], json!("2024-01-15T19:30:00+09:00"));
        // A bare date is the start of its day.
        let v = ok(
            "timezone",
            json!({"datetime": "2024-01-15", "to": "Asia/Tokyo"}),
        );
        assert_eq!(v["datetime"], json!("2024-01-15T09:00:00+09:00"));
    }

    #[test]
    fn timezone_without_datetime_is_now() {
        let expected = json!({
            "datetime": "2024-01-16T05:30:45+09:00",
            "timezone": "Asia/Tokyo",
            "offset": "+09:00",
        });
        assert_eq!(ok("timezone", json!({"to": "Asia/Tokyo"})), expected);
        assert_eq!(
            ok("timezone", json!({"args": [null, "Asia/Tokyo"]})),
            expected
        );
        // A lone zone name where the datetime goes means "now in that zone".
        assert_eq!(ok("timezone", json!({"args": ["Asia/Tokyo"]})), expected);
        assert_eq!(ok("timezone", json!({"datetime": "Asia/Tokyo"})), expected);
        // With the real clock.
        let mut p = Map::new();
        p.insert("to".into(), json!("Europe/Paris"));
        let v = futures::executor::block_on(Date::default().execute(Call::bare("timezone", &p)))
            .unwrap();
        let dt = v["datetime"].as_str().unwrap();
        assert!(dt.parse::<Timestamp>().is_ok(), "{dt}");
        assert_eq!(v["timezone"], json!("Europe/Paris"));
    }

    #[test]
    fn timezone_errors() {
        let m = invalid("timezone", json!({"datetime": "2024-01-15T10:30:00Z"}));
        assert!(m.starts_with("to is required"), "{m}");
        let m = invalid("timezone", json!({}));
        assert!(m.starts_with("to is required"), "{m}");
        let m = invalid(
            "timezone",
            json!({"datetime": "2024-01-15T10:30:00Z", "to": "Mars/Olympus"}),
        );
        assert_eq!(
            m,
            "to \"Mars/Olympus\" is not a known time zone; use an IANA name such as \"UTC\", \"Europe/Paris\" or \"Asia/Ho_Chi_Minh\""
        );
        let m = invalid(
            "timezone",
            json!({"datetime": "2024-01-15T10:30:00", "to": "UTC", "from": "Mars/Olympus"}),
        );
        assert!(
            m.starts_with("from \"Mars/Olympus\" is not a known time zone"),
            "{m}"
        );
        let m = invalid("timezone", json!({"datetime": "yesterday", "to": "UTC"}));
        assert!(
            m.starts_with("datetime \"yesterday\" is not a valid date or time"),
            "{m}"
        );
        let m = invalid("timezone", json!({"datetime": "Mars/Olympus"}));
        assert!(m.starts_with("to is required"), "{m}");
        let m = invalid(
            "timezone",
            json!({"datetime": "2024-01-15T10:30:00Z", "to": ["UTC"]}),
        );
        assert_eq!(m, "to must be a string, not the array [\"UTC\"]");
    }

    #[test]
    fn unknown_time_zones_everywhere() {
        let m = invalid("today", json!({"timezone": "Mars/Olympus"}));
        assert!(
            m.starts_with("timezone \"Mars/Olympus\" is not a known time zone"),
            "{m}"
        );
        let m = invalid("today", json!({"args": ["Not a zone"]}));
        assert!(m.contains("is not a known time zone"), "{m}");
        let m = invalid("today", json!({"timezone": 7}));
        assert_eq!(m, "timezone must be a string, not the number 7");
    }

    #[test]
    fn malformed_dates() {
        for bad in [
            "2024-02-30",
            "2024-13-01",
            "2024-01-15T25:00:00",
            "2024-01-15 garbage",
            "15/01/2024",
            "Jan 15 2024",
            "2024-01-15T10:30:00+99:00",
            "2024-01-15T10:30:00[Mars/Olympus]",
        ] {
            let m = invalid("add_days", json!({"date": bad, "days": 1}));
            assert!(m.contains("is not a valid date or time"), "{bad}: {m}");
            assert!(m.contains("\"2024-01-15\""), "{m}");
        }
    }

    #[test]
    fn malformed_args() {
        let m = invalid("format", json!({"args": "2024-01-15"}));
        assert_eq!(
            m,
            "args must be an array of the positional parameters [date, format, timezone] of format, not the string \"2024-01-15\""
        );
        let m = invalid("today", json!({"args": ["UTC", "extra"]}));
        assert_eq!(m, "args has 2 values but today takes at most 1: [timezone]");
        let m = invalid("diff", json!({"args": [1, 2]}));
        assert_eq!(m, "from must be a string, not the number 1");
    }

    #[test]
    fn unknown_action() {
        let e = err("yesterday", json!({}));
        assert_eq!(e.code, ErrorCode::UnknownAction);
        assert_eq!(
            e.message,
            "date has no action \"yesterday\"; the actions are: today, format, diff, add_days, timezone"
        );
    }

    #[test]
    fn offsets_are_rendered_with_minutes() {
        assert_eq!(offset_string(Offset::UTC), "+00:00");
        assert_eq!(offset_string(Offset::constant(7)), "+07:00");
        assert_eq!(offset_string(Offset::constant(-5)), "-05:00");
        assert_eq!(
            offset_string(Offset::from_seconds(-(3 * 3600 + 30 * 60)).unwrap()),
            "-03:30"
        );
        assert_eq!(
            offset_string(Offset::from_seconds(3600 + 1).unwrap()),
            "+01:00:01"
        );
    }
}
